//! `enjin store copy --to etcd --endpoints URL[,URL] [--ca-file FILE]`: the data directory's
//! SQLite store copied into an empty etcd cluster by `enjin_node::copy_store`, and what it did
//! as a table (or JSON with `-o json`).

use anyhow::Result;
use enjin_node::{COPY_MARKER_KEY, CopyReport, EtcdBackend};
use serde_json::json;

use crate::args::{Global, Output, StoreCopyArgs, StoreTarget};
use crate::{config, output};

pub async fn copy(g: &Global, args: &StoreCopyArgs) -> Result<()> {
    let dir = config::data_dir(g)?;
    let StoreTarget::Etcd = args.to;
    let etcd = EtcdBackend { endpoints: args.endpoints.clone(), ca_file: args.ca_file.clone() };
    let report = enjin_node::copy_store(&dir, &etcd).await?;
    match g.output {
        Output::Json => output::json(&as_json(&report, &etcd)),
        Output::Table => {
            let row = vec![
                dir.join("state.db").display().to_string(),
                report.source_revision.to_string(),
                report.keys.to_string(),
                report.bytes.to_string(),
                report.batches.to_string(),
                report.leased.len().to_string(),
                etcd.endpoints.join(","),
                report.target_revision.to_string(),
                format!("{:.3}s", report.elapsed.as_secs_f64()),
            ];
            output::table(
                &[
                    "SOURCE",
                    "REVISION",
                    "KEYS",
                    "BYTES",
                    "TXNS",
                    "LEASED LEFT OUT",
                    "TARGET",
                    "REVISION",
                    "TIME",
                ],
                &[row],
            );
            if !report.leased.is_empty() {
                println!("left out (transient, under a lease): {}", report.leased.join(", "));
            }
            println!(
                "enjin store copy: verified: the target holds every key and value of revision {} and {}; \
                 the source is unchanged.",
                report.source_revision, COPY_MARKER_KEY
            );
            println!("Now set in enjin.toml, then start the cloud again:\n\n{}", toml_hint(&etcd));
        }
    }
    Ok(())
}

fn as_json(report: &CopyReport, etcd: &EtcdBackend) -> serde_json::Value {
    json!({
        "source_revision": report.source_revision,
        "keys": report.keys,
        "bytes": report.bytes,
        "transactions": report.batches,
        "leased_left_out": report.leased,
        "target": etcd.endpoints,
        "target_revision": report.target_revision,
        "seconds": report.elapsed.as_secs_f64(),
        "next": "set [store] backend = \"etcd\" with these endpoints in enjin.toml",
    })
}

/// The `[store]` table that makes the cloud use the copy.
fn toml_hint(etcd: &EtcdBackend) -> String {
    let endpoints: Vec<String> = etcd.endpoints.iter().map(|e| format!("{e:?}")).collect();
    let mut hint = format!("[store]\nbackend = \"etcd\"\nendpoints = [{}]\n", endpoints.join(", "));
    if let Some(ca) = &etcd.ca_file {
        hint.push_str(&format!("ca_file = {:?}\n", ca.display().to_string()));
    }
    hint
}

/// `enjin nats config`: see [`enjin_node::nats_server_config`].
pub fn nats_config(g: &Global, args: &crate::args::NatsConfigArgs) -> Result<()> {
    let dir = config::data_dir(g)?;
    print!("{}", enjin_node::nats_server_config(&dir, args.listen, &args.names)?);
    Ok(())
}
