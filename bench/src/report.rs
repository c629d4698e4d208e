//! The printed output: machine facts, settings and one Markdown table per subject.

use std::path::Path;
use std::time::Duration;

use crate::run::Sample;

/// One measured line of a table.
#[derive(Debug)]
pub struct Row {
    pub name: String,
    pub sample: Sample,
    /// Whether its operations wait for the disk (and so compare with the fsync anchor).
    pub writes: bool,
}

impl Row {
    pub fn write(name: impl Into<String>, sample: Sample) -> Self {
        Row { name: name.into(), sample, writes: true }
    }

    pub fn read(name: impl Into<String>, sample: Sample) -> Self {
        Row { name: name.into(), sample, writes: false }
    }

    /// `rate` per anchor fsync, or "-" for reads, which never wait for the disk.
    fn per_fsync(&self, rate: f64, fsyncs_per_sec: f64) -> String {
        if self.writes && fsyncs_per_sec > 0.0 { format!("{:.2}", rate / fsyncs_per_sec) } else { "-".into() }
    }
}

/// Facts about the machine that the numbers depend on.
#[derive(Debug)]
pub struct Machine {
    pub cores: String,
    pub kernel: String,
    pub load: String,
    pub filesystem: String,
}

impl Machine {
    pub fn probe(dir: &Path) -> Self {
        let cores =
            std::thread::available_parallelism().map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map_or_else(|e| format!("unknown ({path}: {e})"), |s| s.trim().to_string())
        };
        let load = read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        Machine { cores, kernel: read("/proc/sys/kernel/osrelease"), load, filesystem: filesystem_of(dir) }
    }
}

/// The type and device of the mount that holds `dir`, from `/proc/mounts`.
fn filesystem_of(dir: &Path) -> String {
    let Ok(dir) = dir.canonicalize() else {
        return "unknown".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown (no /proc/mounts)".into();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point).then(|| (point.len(), format!("{fstype} on {device}, mounted at {point}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, desc)| desc)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn per_sec(rate: f64) -> String {
    if rate >= 100.0 { format!("{rate:.0}") } else { format!("{rate:.1}") }
}

fn ops(s: &Sample) -> String {
    if s.time_limited() { format!("{} of {} (time limit)", s.ops(), s.planned) } else { s.ops().to_string() }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

pub fn print_anchor(rows: &[Row]) {
    println!("## Anchor: raw fsync in the same directory\n");
    println!("| anchor | ops | time (s) | fsyncs/s | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.sample;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            ops(s),
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
        );
    }
    println!();
}

pub fn print_store(rows: &[Row], fsyncs_per_sec: f64) {
    println!("## Store transactions (SqliteStore: WAL, synchronous=FULL, group commit)\n");
    println!(
        "| store workload | tasks | ops | time (s) | txns/s | p50 (ms) | p99 (ms) | max (ms) | txns per anchor fsync | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let s = &r.sample;
        let mut notes = Vec::new();
        if s.conflicts > 0 {
            let per = s.conflicts as f64 / s.ops().max(1) as f64;
            notes.push(format!(
                "{} lost CAS attempts ({per:.1} per success); {} writer txns/s",
                s.conflicts,
                per_sec(s.attempts_per_sec())
            ));
        }
        if s.errors > 0 {
            notes.push(format!("{} errors", s.errors));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            s.tasks,
            ops(s),
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
            r.per_fsync(s.attempts_per_sec(), fsyncs_per_sec),
            notes.join("; "),
        );
    }
    println!();
}

pub fn print_api(rows: &[Row], fsyncs_per_sec: f64) {
    println!("## HTTP API (in-process control plane on 127.0.0.1, enjin-client, SQLite store)\n");
    println!(
        "| api request | concurrency | ops | time (s) | req/s | p50 (ms) | p99 (ms) | max (ms) | req per anchor fsync | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let s = &r.sample;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            s.tasks,
            ops(s),
            secs(s.elapsed),
            per_sec(s.per_sec()),
            ms(s.quantile(0.5)),
            ms(s.quantile(0.99)),
            ms(s.max()),
            r.per_fsync(s.per_sec(), fsyncs_per_sec),
            s.errors,
        );
    }
    println!();
}
