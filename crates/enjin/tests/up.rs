//! `enjin up` from a fresh data directory, as a user meets it.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Running, cli, stderr, stdout};

#[test]
fn up_answers_node_list_and_resumes_after_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start("up", &data);

    let mode = std::fs::metadata(data.join("admin.token")).expect("token file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the admin token is private");

    let out = cli(&data, &["-o", "json", "node", "list", "--ring", "0"]);
    assert!(out.status.success(), "node list failed: {}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json list");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "exactly this machine: {list}");
    assert_eq!(items[0]["ring"], 0);
    let machine = items[0]["uuid"].clone();

    let table = cli(&data, &["node", "list"]);
    assert!(stdout(&table).contains("NODE") && stdout(&table).contains("STATE"), "{}", stdout(&table));

    // The ring 1 bus: this machine's parent key, and a join token for a ring 1 child.
    let keys = cli(&data, &["-o", "json", "key", "list"]);
    assert!(keys.status.success(), "{}", stderr(&keys));
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).expect("json keys");
    assert_eq!(keys["items"][0]["role"], "parent");
    assert_eq!(keys["items"][0]["local"], true);
    let mode = std::fs::metadata(data.join("keys/ring-1-parent.key")).expect("key file").permissions().mode()
        & 0o777;
    assert_eq!(mode, 0o600, "private keys are 0600");
    let machine_label = items[0]["label"].as_str().expect("label").to_string();
    let token = cli(&data, &["join-token", "create", "--ring", "1", "--parent", &machine_label]);
    assert!(token.status.success(), "{}", stderr(&token));
    assert!(stdout(&token).contains("enjin_join_"), "{}", stdout(&token));
    let refused = cli(&data, &["join-token", "create", "--ring", "2", "--parent", &machine_label]);
    assert!(stderr(&refused).contains("ring 1 parent"), "{}", stderr(&refused));

    // The audit log shows both, newest first: the refusal, then the create, by the admin.
    let audit = cli(&data, &["-o", "json", "audit", "--since", "1h"]);
    assert!(audit.status.success(), "{}", stderr(&audit));
    let audit: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("json audit");
    let records: Vec<_> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["route"] == "/v1/join-tokens")
        .collect();
    assert_eq!(records.len(), 2, "{audit}");
    assert_eq!(
        (records[1]["principal"].as_str(), records[1]["verb"].as_str()),
        (Some("admin"), Some("create"))
    );
    assert_eq!((records[1]["status"].as_u64(), records[1]["result"].as_str()), (Some(201), Some("ok")));
    assert_eq!(records[0]["result"], "refused");
    let table = cli(&data, &["audit", "--principal", "admin"]);
    assert!(
        stdout(&table).contains("PRINCIPAL") && stdout(&table).contains("join-token"),
        "{}",
        stdout(&table)
    );

    let status = up.interrupt();
    assert!(status.success(), "Ctrl-C is a clean exit: {status:?}");

    // Again on the same data directory: the same cloud, the same machine node, no duplicate.
    let again = Running::start("up", &data);
    let out = cli(&data, &["-o", "json", "node", "list", "--ring", "0"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["items"][0]["uuid"], machine);
    assert!(again.interrupt_and_clean().success());
}

#[test]
fn cli_errors_are_plain_and_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _server = Running::start("server", &data);

    let out = cli(&data, &["node", "create", "orphan", "--ring", "1", "--set", "strategy=netns"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("spec.parent") && err.contains("422"), "{err}");

    let out = cli(&data, &["--token", "enjin_not-a-token", "node", "list"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));

    let out = cli(&data, &["tier", "get", "no-such-tier"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no tier is labelled"), "{}", stderr(&out));

    // Labels stand in for uuids in references.
    let ok = cli(&data, &["node", "create", "m1"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = cli(
        &data,
        &[
            "node",
            "create",
            "h1",
            "--ring",
            "1",
            "--set",
            "parent=m1",
            "--set",
            "strategy=netns",
            "-l",
            "enjin.dev/sandbox=unix-user",
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = cli(&data, &["-o", "json", "node", "list", "--parent", "m1"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list["items"][0]["label"], "h1");

    // `enjin node run`: a ring 2 node that runs a command on a ring 1 host.
    let run = cli(
        &data,
        &["node", "run", "web", "--host", "h1", "--probe", "tcp:8080", "--pids", "64", "--", "sleep", "100"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let web = cli(&data, &["-o", "json", "node", "get", "web"]);
    let web: serde_json::Value = serde_json::from_slice(&web.stdout).expect("json");
    assert_eq!(web["ring"], 2);
    assert_eq!(web["spec"]["strategy"], "unix-user");
    assert_eq!(web["spec"]["run"]["command"], serde_json::json!(["sleep", "100"]));
    assert_eq!(web["spec"]["run"]["probe"]["port"], 8080);
    assert_eq!(web["spec"]["resources"]["pids"], 64);
    let bad = cli(&data, &["node", "run", "bad", "--host", "h1", "--probe", "http:web", "--", "true"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("is not a port"), "{}", stderr(&bad));
    let tree = cli(&data, &["node", "list"]);
    assert!(stdout(&tree).contains("   └─ web"), "{}", stdout(&tree));
}

#[test]
fn compartment_tree_draws_the_dag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _server = Running::start("server", &data);
    for args in [
        &["compartment", "create", "eu", "--set", "type=region"][..],
        &["compartment", "create", "dc-a", "--set", "type=datacenter", "--set", "parents=eu"],
        &["compartment", "create", "dc-b", "--set", "type=datacenter", "--set", "parents=eu"],
        &["compartment", "create", "rack-1", "--set", "type=rack", "--set", "parents=dc-a,dc-b"],
    ] {
        let out = cli(&data, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = cli(&data, &["compartment", "tree"]);
    let text = stdout(&out);
    assert!(text.starts_with("eu (region, ring 0)\n"), "{text}");
    assert!(text.contains("│   └── rack-1 (rack, ring 0)"), "{text}");
    assert!(text.contains("rack-1 ↗ (drawn under dc-a)"), "{text}");

    let cycle = cli(&data, &["compartment", "update", "eu", "--set", "parents=rack-1"]);
    assert!(!cycle.status.success());
    assert!(stderr(&cycle).contains("acyclic"), "{}", stderr(&cycle));
}
