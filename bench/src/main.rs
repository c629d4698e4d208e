//! `enjin-bench`: measures store transactions and the meta API in one run and prints Markdown
//! tables, next to the disk's raw fsync rate measured in the same directory. It only ever
//! talks to loopback and writes only inside its own temporary directory.

#![forbid(unsafe_code)]

mod api;
mod report;
mod run;
mod store;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::report::{Machine, Row};
use crate::run::Limits;

const DEFAULT_OPS: u64 = 10_000;
const DEFAULT_SECONDS: f64 = 5.0;
const QUICK_OPS: u64 = 20;
const QUICK_SECONDS: f64 = 2.0;

/// Measure store transactions and the meta API, and print the results as Markdown tables.
///
/// Every row stops after `--ops` operations or `--seconds`, whichever comes first, and says
/// how many operations it ran.
#[derive(Debug, Parser)]
#[command(name = "enjin-bench", version)]
struct Args {
    /// Operations per row [default: 10000, or 20 with --quick]
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Time limit per row, in seconds [default: 5, or 2 with --quick]
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// A tiny run that only checks that everything works (for CI)
    #[arg(long)]
    quick: bool,
}

impl Args {
    fn limits(&self) -> anyhow::Result<Limits> {
        let (ops, seconds) =
            if self.quick { (QUICK_OPS, QUICK_SECONDS) } else { (DEFAULT_OPS, DEFAULT_SECONDS) };
        let ops = self.ops.unwrap_or(ops);
        anyhow::ensure!(ops >= 1, "--ops must be at least 1");
        let seconds = self.seconds.unwrap_or(seconds);
        let time = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|t| !t.is_zero())
            .with_context(|| format!("--seconds must be a positive number, not {seconds}"))?;
        Ok(Limits { ops, time })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limits = match args.limits() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(&args, limits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &Args, limits: Limits) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("enjin-bench-")
        .tempdir()
        .context("failed to create a temporary directory")?;
    let machine = Machine::probe(dir.path());
    let build = if cfg!(debug_assertions) {
        "debug (numbers are not representative; use --release)"
    } else {
        "release"
    };

    println!("# enjin-bench\n");
    println!("- cores: {} (available_parallelism)", machine.cores);
    println!("- kernel: {}", machine.kernel);
    println!("- load average at start: {}", machine.load);
    println!("- temp dir: {} ({})", dir.path().display(), machine.filesystem);
    println!("- build: {build}");
    println!(
        "- settings: up to {} ops or {:.1} s per row, whichever comes first{}; store values {} B; \
         concurrent store rows use {} tasks",
        limits.ops,
        limits.time.as_secs_f64(),
        if args.quick { " (--quick)" } else { "" },
        store::VALUE_BYTES,
        store::TASKS,
    );
    println!();

    let store_dir = dir.path().join("store");
    let api_dir = dir.path().join("api");
    for d in [&store_dir, &api_dir] {
        std::fs::create_dir(d).with_context(|| format!("failed to create {}", d.display()))?;
    }

    eprintln!("measuring the fsync anchor…");
    let first = store::fsync_anchor(dir.path(), limits).await?;
    eprintln!("measuring store transactions…");
    let store_rows = store::rows(&store_dir, limits).await?;
    eprintln!("measuring the HTTP API…");
    let api_rows = api::rows(&api_dir, limits).await?;
    // Measured again at the end: the disk is shared, and its rate can drift during the run.
    eprintln!("measuring the fsync anchor again…");
    let last = store::fsync_anchor(dir.path(), limits).await?;
    let anchors = [
        Row::write("append 1 B + fdatasync, at start", first),
        Row::write("append 1 B + fdatasync, at end", last),
    ];
    let fsyncs_per_sec = anchors.iter().map(|r| r.sample.per_sec()).sum::<f64>() / anchors.len() as f64;

    report::print_anchor(&anchors);
    report::print_store(&store_rows, fsyncs_per_sec);
    report::print_api(&api_rows, fsyncs_per_sec);
    println!(
        "\"per anchor fsync\" divides a row's rate by the mean of the two anchor rates \
         ({fsyncs_per_sec:.0}/s): about 1 means one commit per fsync, more means group commit \
         is batching. Client and server share this process and its cores.",
    );

    dir.close().context("failed to remove the temporary directory")?;

    let failed: Vec<&Row> =
        anchors.iter().chain(&store_rows).chain(&api_rows).filter(|r| r.sample.errors > 0).collect();
    if let Some(row) = failed.first() {
        anyhow::bail!(
            "{} row(s) had failed operations; first in {:?}: {}",
            failed.len(),
            row.name,
            row.sample.first_error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(())
}
