//! Runs the built benchmark with `--quick` and checks that it prints every table with a
//! non-zero rate in each row, and that the bus lost nothing. It checks that the benchmark
//! works, not how fast anything is. The supervision section needs root for its sandbox rows,
//! and gets it: these tests run as root in CI, and are not skipped.

use std::process::Command;
use std::sync::Mutex;

/// The tables and the column holding each one's rate.
const TABLES: [(&str, &str); 4] = [
    ("| anchor |", "fsyncs/s"),
    ("| store workload |", "txns/s"),
    ("| list |", "lists/s"),
    ("| api request |", "req/s"),
];

/// The bus tables and the columns that must be positive in every row.
const BUS_TABLES: [(&str, &str); 4] = [
    ("| bus crypto |", "ops/s"),
    ("| bus broadcast |", "msgs/s"),
    ("| bus broadcast |", "deliveries/s"),
    ("| bus broadcast |", "p50 (ms)"),
];

/// The supervision tables and the columns that must be positive in every row.
const SUPERVISE_TABLES: [(&str, &str); 7] = [
    ("| restart after SIGKILL |", "kills"),
    ("| restart after SIGKILL |", "running p50 (ms)"),
    ("| restart after SIGKILL |", "serving p50 (ms)"),
    ("| restart after SIGKILL |", "serving max (ms)"),
    ("| restart after SIGKILL |", "restarts counted"),
    ("| instance |", "processes in its tree"),
    ("| instance |", "program RSS (KiB)"),
];

/// One run at a time: the supervision section starts `enjin up`, whose hosts' bridge always
/// takes the same address range, and its timings mean little with another run beside it.
static SERIAL: Mutex<()> = Mutex::new(());

/// The bus broadcast columns that must be zero in every row.
const BUS_ZEROS: [&str; 3] = ["slow-consumer disconnects", "missing deliveries", "publish Full retries"];

fn cells(line: &str) -> Vec<&str> {
    line.trim().trim_matches('|').split('|').map(str::trim).collect()
}

/// The rates in column `column` of the table whose header starts with `header`.
fn rates(output: &str, header: &str, column: &str) -> Vec<f64> {
    let mut lines = output.lines().skip_while(|l| !l.starts_with(header));
    let head = lines.next().unwrap_or_else(|| panic!("no table {header:?} in:\n{output}"));
    let index = cells(head)
        .iter()
        .position(|c| *c == column)
        .unwrap_or_else(|| panic!("no column {column:?} in {head:?}"));
    lines
        .skip(1) // the |---| line
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cell = cells(row)[index];
            cell.parse().unwrap_or_else(|e| panic!("{cell:?} in {row:?} is not a number: {e}"))
        })
        .collect()
}

/// Runs enjin-bench with `args` and returns its standard output, which it must have exited 0.
fn quick_run(args: &[&str]) -> String {
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_enjin-bench"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run enjin-bench {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "enjin-bench {args:?} failed with {}:\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("- cores: "), "no machine facts in:\n{stdout}");
    stdout
}

fn assert_positive(stdout: &str, tables: &[(&str, &str)]) {
    for (header, column) in tables {
        let rates = rates(stdout, header, column);
        assert!(!rates.is_empty(), "table {header:?} has no rows:\n{stdout}");
        for rate in rates {
            assert!(rate > 0.0, "a zero {column} in {header:?}:\n{stdout}");
        }
    }
}

fn assert_bus_tables(stdout: &str) {
    assert_positive(stdout, &BUS_TABLES);
    for column in BUS_ZEROS {
        let counts = rates(stdout, "| bus broadcast |", column);
        assert!(counts.iter().all(|c| *c == 0.0), "non-zero {column:?}:\n{stdout}");
    }
}

/// The cells of column `column` in the table whose header starts with `header`, as text.
fn column(output: &str, header: &str, column: &str) -> Vec<String> {
    let mut lines = output.lines().skip_while(|l| !l.starts_with(header));
    let head = lines.next().unwrap_or_else(|| panic!("no table {header:?} in:\n{output}"));
    let index = cells(head)
        .iter()
        .position(|c| *c == column)
        .unwrap_or_else(|| panic!("no column {column:?} in {head:?}"));
    lines.skip(1).take_while(|l| l.starts_with('|')).map(|row| cells(row)[index].to_string()).collect()
}

fn assert_supervise_tables(stdout: &str) {
    assert_positive(stdout, &SUPERVISE_TABLES);
    let rows = column(stdout, "| restart after SIGKILL |", "restart after SIGKILL");
    assert!(rows.iter().any(|r| r.contains("sandbox")), "no sandbox rows:\n{stdout}");
    // A plain process is the program alone; a sandbox adds its init.
    let extra = rates(stdout, "| instance |", "beside the program");
    assert_eq!(extra, [0.0, 1.0], "processes beside the program:\n{stdout}");
    // Idle memory: measured when the enjin binary was built beside this one, "-" otherwise;
    // the anchor row is always measured.
    let rss = column(stdout, "| idle process |", "RSS (MiB)");
    assert!(!rss.is_empty(), "the idle memory table has no rows:\n{stdout}");
    for cell in rss.iter().filter(|c| *c != "-") {
        let mib: f64 = cell.parse().unwrap_or_else(|e| panic!("{cell:?} is not a number: {e}"));
        assert!(mib > 0.0, "a zero RSS:\n{stdout}");
    }
    assert!(rss.last().is_some_and(|c| c != "-"), "the anchor row has no RSS:\n{stdout}");
}

/// The deploy table: every row took some time to its first 200 (or the section said why it
/// was skipped: without the enjin binary beside this one).
fn assert_deploy_table(stdout: &str) {
    assert!(stdout.contains("## Deploy"), "no deploy section:\n{stdout}");
    if !stdout.contains("| deploy |") {
        assert!(stdout.contains("skipped:"), "the deploy section neither ran nor said why:\n{stdout}");
        return;
    }
    let medians = column(stdout, "| deploy |", "median");
    assert_eq!(medians.len(), 2, "{stdout}");
    for m in medians {
        let ms: f64 = m.trim_end_matches(" ms").parse().unwrap_or_else(|e| panic!("{m:?}: {e}"));
        assert!(ms > 0.0, "a zero deploy time:\n{stdout}");
    }
}

#[test]
fn quick_run_prints_every_table_with_nonzero_rates() {
    let stdout = quick_run(&["--quick"]);
    assert_positive(&stdout, &TABLES);
    assert_bus_tables(&stdout);
    assert_fanout_table(&stdout);
    assert_supervise_tables(&stdout);
    assert_deploy_table(&stdout);
    assert_firewall_table(&stdout);
    assert_idle_table(&stdout);
}

/// The idle row: enjin's CPU is positive (its hosts heartbeat), and the store's counters were
/// read from `/metrics`.
fn assert_idle_table(stdout: &str) {
    let cpu = rates(stdout, "| idle cloud |", "total");
    assert_eq!(cpu.len(), 1, "{stdout}");
    assert!(cpu[0] > 0.0, "an idle cloud that used no CPU at all:\n{stdout}");
    // Numbers, not "not counted": the binary exports the store's counters.
    for column in ["store reads/min", "keys read/min", "store txns/min"] {
        assert_eq!(rates(stdout, "| idle cloud |", column).len(), 1, "{stdout}");
    }
    // Its apps' instances had namespaces of their own; the bench removed them with the hosts.
    let idle = stdout.split("| idle cloud |").nth(1).unwrap_or_default();
    assert!(
        idle.contains("instance namespace eji-"),
        "the idle cloud's instance namespaces were not removed:\n{idle}"
    );
}

#[test]
fn only_supervise_runs_the_supervision_section_alone() {
    let stdout = quick_run(&["--quick", "--only", "supervise"]);
    assert_supervise_tables(&stdout);
    for (header, _) in TABLES.iter().chain(&BUS_TABLES) {
        assert!(!stdout.contains(header), "{header:?} should not run with --only supervise:\n{stdout}");
    }
}

#[test]
fn only_bus_runs_the_bus_section_alone() {
    let stdout = quick_run(&["--quick", "--only", "bus"]);
    assert_bus_tables(&stdout);
    for (header, _) in TABLES {
        assert!(!stdout.contains(header), "{header:?} should not run with --only bus:\n{stdout}");
    }
}

/// The fan-out table: both transports at each subscriber count, saturating and paced, each
/// row delivering and nothing lost.
fn assert_fanout_table(stdout: &str) {
    let transports = column(stdout, "| fan-out |", "fan-out");
    assert_eq!(transports.len(), 8, "{stdout}");
    for via in ["embedded hub", "nats-server"] {
        assert_eq!(transports.iter().filter(|t| *t == via).count(), 4, "{via} rows:\n{stdout}");
    }
    assert_eq!(rates(stdout, "| fan-out |", "subscribers"), [1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0]);
    assert_positive(stdout, &[("| fan-out |", "deliveries/s"), ("| fan-out |", "p50 (ms)")]);
    for zero in ["missing deliveries", "subscribers cut off"] {
        let counts = rates(stdout, "| fan-out |", zero);
        assert!(counts.iter().all(|c| *c == 0.0), "non-zero {zero:?}:\n{stdout}");
    }
    let paced = column(stdout, "| fan-out |", "pace");
    assert_eq!(paced.iter().filter(|p| p.starts_with("paced")).count(), 4, "{stdout}");
}

#[test]
fn only_fanout_runs_the_fanout_section_alone() {
    let stdout = quick_run(&["--quick", "--only", "fanout"]);
    assert_fanout_table(&stdout);
    for (header, _) in TABLES.iter().chain(&BUS_TABLES) {
        assert!(!stdout.contains(header), "{header:?} should not run with --only fanout:\n{stdout}");
    }
}

/// The firewall table: every row took some time, and the 1,000-rule row is there.
fn assert_firewall_table(stdout: &str) {
    let medians = rates(stdout, "| firewall |", "median (ms)");
    assert_eq!(medians.len(), 5, "{stdout}");
    assert!(medians.iter().all(|m| *m > 0.0), "a zero apply time:\n{stdout}");
    let rules = rates(stdout, "| firewall |", "rules");
    assert!(rules.contains(&1000.0), "no 1,000-rule row:\n{stdout}");
}

#[test]
fn only_firewall_runs_the_firewall_section_alone() {
    let stdout = quick_run(&["--quick", "--only", "firewall"]);
    assert_firewall_table(&stdout);
    assert!(!stdout.contains("| anchor |") && !stdout.contains("| bus crypto |"), "{stdout}");
}

#[test]
fn rejects_a_zero_time_limit() {
    let out = Command::new(env!("CARGO_BIN_EXE_enjin-bench"))
        .args(["--quick", "--seconds", "0"])
        .output()
        .expect("run enjin-bench");
    assert_eq!(out.status.code(), Some(2));
}
