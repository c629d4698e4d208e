//! The instance firewall: how long a host takes to apply its rules — compile the control
//! plane's `HostFirewall` into nftables JSON and run it as one `nft -j -f -` transaction — in a
//! fresh network namespace of its own (removed again). The anchor is the same transaction for
//! a host with no instances: what running nft and replacing the table costs at all.

use std::process::Command;
use std::time::{Duration, Instant};

use enjin_model::api::{FirewallInstance, FirewallRule, HostFirewall};
use enjin_model::kinds::{Action, Cidr, PortRange, Protocol};
use enjin_net::firewall::{apply_in, compile};
use uuid::Uuid;

/// One measured line.
struct Row {
    what: &'static str,
    instances: usize,
    rules: usize,
    times: Vec<Duration>,
}

/// A host with `instances` instances of `per_instance` ingress rules each (half of them with
/// four peer ranges, a quarter deny), alternating TCP and UDP port ranges.
fn host(instances: usize, per_instance: usize) -> HostFirewall {
    let cidr = |s: String| s.parse::<Cidr>().expect("a valid range");
    HostFirewall {
        edge: vec!["10.250.0.1".parse().expect("ip")],
        dns: vec!["10.250.0.1:53".parse().expect("socket address")],
        protected: vec![cidr("10.250.0.0/24".into()), cidr("10.240.0.0/16".into())],
        instance_network: Some(cidr("10.251.0.0/16".into())),
        instances: (0..instances)
            .map(|i| FirewallInstance {
                node: Uuid::new_v4(),
                account: Uuid::new_v4(),
                address: format!("10.251.{}.{}", i / 250, i % 250 + 2).parse().expect("ip"),
                interface: format!("{}{i:08}", enjin_net::INSTANCE_PREFIX),
                port: Some(8000),
                ingress: (0..per_instance)
                    .map(|r| FirewallRule {
                        action: if r % 4 == 3 { Action::Deny } else { Action::Allow },
                        protocol: if r % 2 == 0 { Protocol::Tcp } else { Protocol::Udp },
                        ports: Some(PortRange { first: 1000 + r as u16, last: 1010 + r as u16 }),
                        peers: if r % 2 == 0 {
                            (0..4).map(|p| cidr(format!("10.{}.{p}.0/24", 100 + r % 50))).collect()
                        } else {
                            vec![cidr(format!("10.251.{}.{}/32", r / 250, r % 250 + 2))]
                        },
                        rule: Some(Uuid::new_v4()),
                    })
                    .collect(),
                egress: Vec::new(),
            })
            .collect(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t[t.len() / 2]
}

/// Removes the namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn measure(ns: &str, runs: usize) -> anyhow::Result<Vec<Row>> {
    let plans: [(&'static str, usize, usize, bool); 5] = [
        ("anchor: apply, no instances", 0, 0, true),
        ("compile only, 1,000 rules", 50, 20, false),
        ("apply 1,000 rules (50 instances x 20)", 50, 20, true),
        ("apply 1,000 rules (1 instance x 1,000)", 1, 1000, true),
        ("apply 10,000 rules (100 instances x 100)", 100, 100, true),
    ];
    let mut rows = Vec::new();
    for (what, instances, per, apply) in plans {
        let fw = host(instances, per);
        let mut times = Vec::new();
        for _ in 0..runs {
            let start = Instant::now();
            if apply {
                apply_in(ns, &fw)?;
            } else {
                std::hint::black_box(compile(std::hint::black_box(&fw)));
            }
            times.push(start.elapsed());
        }
        rows.push(Row { what, instances, rules: instances * per, times });
    }
    Ok(rows)
}

pub async fn run(quick: bool) -> anyhow::Result<Vec<crate::Failure>> {
    eprintln!("measuring the instance firewall…");
    let runs = if quick { 2 } else { 10 };
    let ns = Netns(format!("ejbfw{}", std::process::id() % 1_000_000));
    // A namespace left by a run that was killed; usually there is none.
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).stderr(std::process::Stdio::null()).status();
    let made = Command::new("ip").args(["netns", "add", &ns.0]).status();
    if !made.is_ok_and(|s| s.success()) {
        return Ok(vec![crate::Failure {
            row: "firewall".into(),
            why: format!("cannot make network namespace {} (needs root and iproute2)", ns.0),
        }]);
    }
    let name = ns.0.clone();
    let result = tokio::task::spawn_blocking(move || measure(&name, runs)).await?;
    drop(ns);
    match result {
        Ok(rows) => {
            print(&rows, runs);
            Ok(Vec::new())
        }
        Err(e) => Ok(vec![crate::Failure { row: "firewall".into(), why: format!("{e:#}") }]),
    }
}

fn print(rows: &[Row], runs: usize) {
    println!("## Instance firewall: compile + one nft transaction\n");
    println!("| firewall | instances | rules | runs | min (ms) | median (ms) | max (ms) | x anchor |");
    println!("|---|---|---|---|---|---|---|---|");
    let anchor = rows.first().map(|r| median(&r.times)).unwrap_or_default();
    for r in rows {
        let (min, max) = (
            r.times.iter().min().copied().unwrap_or_default(),
            r.times.iter().max().copied().unwrap_or_default(),
        );
        let med = median(&r.times);
        let ratio = if anchor.is_zero() {
            "-".into()
        } else {
            format!("{:.2}", med.as_secs_f64() / anchor.as_secs_f64())
        };
        println!(
            "| {} | {} | {} | {runs} | {} | {} | {} | {ratio} |",
            r.what,
            r.instances,
            r.rules,
            ms(min),
            ms(med),
            ms(max)
        );
    }
    println!();
    println!(
        "Each apply compiles the host's firewall and runs `nft -j -f -` once in a fresh network \
         namespace: the transaction deletes and recreates table inet enjin whole (the first run \
         creates it, the rest replace it). Ingress rules carry one to four peer ranges; the \
         anchor is the same transaction with no instances.\n"
    );
}
