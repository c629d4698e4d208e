//! Runs the built benchmark with `--quick` and checks that it prints every table with a
//! non-zero rate in each row. It checks that the benchmark works, not how fast anything is.

use std::process::Command;

/// The tables and the column holding each one's rate.
const TABLES: [(&str, &str); 3] =
    [("| anchor |", "fsyncs/s"), ("| store workload |", "txns/s"), ("| api request |", "req/s")];

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

#[test]
fn quick_run_prints_every_table_with_nonzero_rates() {
    let out = Command::new(env!("CARGO_BIN_EXE_enjin-bench"))
        .arg("--quick")
        .output()
        .expect("run enjin-bench --quick");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "enjin-bench --quick failed with {}:\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("- cores: "), "no machine facts in:\n{stdout}");
    for (header, column) in TABLES {
        let rates = rates(&stdout, header, column);
        assert!(!rates.is_empty(), "table {header:?} has no rows:\n{stdout}");
        for rate in rates {
            assert!(rate > 0.0, "a zero {column} in {header:?}:\n{stdout}");
        }
    }
}

#[test]
fn rejects_a_zero_time_limit() {
    let out = Command::new(env!("CARGO_BIN_EXE_enjin-bench"))
        .args(["--quick", "--seconds", "0"])
        .output()
        .expect("run enjin-bench");
    assert_eq!(out.status.code(), Some(2));
}
