//! Two tenants through the real binary, as root: `enjin up`, accounts and memberships made by
//! the operator, a token per tenant from `enjin token create`, and every command a tenant would
//! try against the other's app with its own token. Each refusal is asserted, and so is what the
//! tenant may do with its own app, so a test that passes because nothing works is impossible.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{BIN, Running, example_copy, root_or_skip, stderr, stdout, wait_until};

/// `enjin` as a tenant: the data directory for the server and CA, the tenant's token.
fn as_tenant(data: &Path, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("ENJIN_TOKEN", token)
        .env("ENJIN_LOG", "warn")
        .output()
        .expect("run enjin")
}

fn operator(data: &Path, args: &[&str]) -> Output {
    let out = common::cli(data, args);
    assert!(out.status.success(), "enjin {args:?}: {}{}", stdout(&out), stderr(&out));
    out
}

/// A token for `principal`, admin of `account`.
fn tenant(data: &Path, principal: &str, account: &str) -> String {
    operator(data, &["account", "create", account]);
    let member = format!("principal={principal}");
    let acc = format!("account={account}");
    operator(data, &["membership", "create", "--set", &member, "--set", &acc, "--set", "role=admin"]);
    let out = operator(
        data,
        &["-o", "json", "token", "create", principal, "--account", account, "--expires", "1h"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("token json");
    v["token"].as_str().expect("a token").to_string()
}

fn app_named(dir: &Path, name: &str) -> std::path::PathBuf {
    let app = example_copy(&dir.join(name));
    let manifest = app.join("enjin.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let text = text.replace("name = \"python-hello\"", &format!("name = \"{name}\""));
    std::fs::write(&manifest, text).expect("manifest");
    app
}

/// Refused, with one of `needles` in the error.
fn refused(out: &Output, what: &str, needles: &[&str]) {
    assert!(!out.status.success(), "{what} was allowed: {}", stdout(out));
    let err = stderr(out).to_lowercase();
    assert!(needles.iter().any(|n| err.contains(n)), "{what}: expected one of {needles:?} in {err}");
}

/// What another account's object must look like: absent.
const ABSENT: &[&str] = &["not found", "no app named", "no account is labelled", "http 404"];

#[test]
fn a_tenant_cannot_touch_another_tenants_app() {
    if !root_or_skip("the sandbox tenants' apps run in") {
        return;
    }
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let data = dir.path().join("data");
    let up = Running::start_with("up", &data, &["--hosts", "1"]);
    let router = up.router.expect("router");
    wait_until("host-1 is up", Duration::from_secs(60), || {
        let out = common::cli(&data, &["-o", "json", "node", "list"]);
        stdout(&out).contains("host-1").then_some(())
    });
    let alice = tenant(&data, "alice", "acme");
    let bob = tenant(&data, "bob", "globex");

    // Alice deploys her app with her own token; it serves.
    let app = app_named(dir.path(), "acme-web");
    let out = as_tenant(&data, &alice, &["deploy", app.to_str().expect("utf-8")]);
    assert!(out.status.success(), "alice's deploy: {}{}", stdout(&out), stderr(&out));
    let body = wait_until("alice's app answers", Duration::from_secs(30), || {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", &format!("http://acme-web.localhost:{}/", router.port())])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        body.starts_with("hello").then_some(body)
    });
    assert!(body.contains("v1"), "{body}");
    let out = as_tenant(&data, &alice, &["app", "status", "acme-web"]);
    assert!(out.status.success(), "alice reads her own status: {}", stderr(&out));

    // Bob, with his token, against alice's app: it does not exist for him.
    for (what, args) in [
        ("status", vec!["app", "status", "acme-web"]),
        ("logs", vec!["logs", "acme-web", "--tail", "10"]),
        ("scale", vec!["scale", "acme-web", "web=0"]),
        ("releases", vec!["releases", "acme-web"]),
        ("rollback", vec!["rollback", "acme-web"]),
    ] {
        refused(&as_tenant(&data, &bob, &args), &format!("bob's {what} of alice's app"), ABSENT);
    }
    // Nor her instances, in any list.
    let out = as_tenant(&data, &bob, &["-o", "json", "node", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("acme-web"), "bob sees alice's instances: {}", stdout(&out));
    // Deploying under her app's name is a conflict, not a takeover.
    let squat = app_named(&dir.path().join("bob"), "acme-web");
    refused(
        &as_tenant(&data, &bob, &["deploy", squat.to_str().expect("utf-8")]),
        "bob's deploy as acme-web",
        &["taken", "http 409"],
    );
    // Escalation: a token for the operator's account, or a role beyond his own.
    refused(
        &as_tenant(&data, &bob, &["token", "create", "mallory", "--account", "system"]),
        "bob's token in the system account",
        ABSENT,
    );
    refused(
        &as_tenant(
            &data,
            &bob,
            &[
                "membership",
                "create",
                "--set",
                "principal=bob",
                "--set",
                "account=acme",
                "--set",
                "role=admin",
            ],
        ),
        "bob's membership in alice's account",
        ABSENT,
    );
    // A node of his own, made by hand through the API: it gets a network of its own too, never
    // the host's.
    let nodes = operator(&data, &["-o", "json", "node", "list"]);
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).expect("nodes json");
    let host = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["label"] == "host-1")
        .and_then(|n| n["uuid"].as_str())
        .expect("host-1")
        .to_string();
    let body = serde_json::json!({"parent": host, "strategy": "unix-user",
        "run": {"command": ["/usr/bin/python3", "-m", "http.server", "8080"]}});
    let file = dir.path().join("bob-node.json");
    std::fs::write(&file, body.to_string()).expect("write");
    let out = as_tenant(
        &data,
        &bob,
        &["-o", "json", "node", "create", "bob-shell", "--ring", "2", "-f", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "bob's node: {}{}", stdout(&out), stderr(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("node json");
    assert_eq!(made["spec"]["run"]["own_network"], true, "a tenant's node gets its own network: {made}");
    let short: String =
        made["uuid"].as_str().expect("uuid").chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    wait_until("bob's node runs in its own namespace", Duration::from_secs(30), || {
        Path::new("/run/netns").join(format!("eji-{short}")).exists().then_some(())
    });
    // A tenant writes access rules with its own token alone: its account has a rule set on
    // the instance network it cannot see. Naming another account's app is refused.
    let out = as_tenant(
        &data,
        &alice,
        &["access-rule", "create", "web-to-web", "--from", "acme-web", "--to", "acme-web", "--port", "9000"],
    );
    assert!(out.status.success(), "alice's rule: {}{}", stdout(&out), stderr(&out));
    let out = as_tenant(
        &data,
        &bob,
        &["access-rule", "create", "into-acme", "--from", "10.0.0.0/8", "--to", "acme-web", "--port", "8080"],
    );
    assert!(!out.status.success(), "bob named alice's app in a rule: {}", stdout(&out));
    // What the platform made for alice's app is not hers to rewrite: her release, pointed at
    // other code, or a rollout task of her own making, to run it unsandboxed.
    let out = as_tenant(&data, &alice, &["-o", "json", "releases", "acme-web"]);
    let releases: serde_json::Value = serde_json::from_slice(&out.stdout).expect("releases json");
    let release = releases["items"][0]["uuid"].as_str().expect("a release").to_string();
    let other = format!("package.digest=sha256:{}", "0".repeat(64));
    refused(
        &as_tenant(&data, &alice, &["release", "update", &release, "--set", &other]),
        "alice's rewrite of her release",
        &["kept by the platform"],
    );
    let task = serde_json::json!({"type": "deploy", "state": "running", "subject": release, "step": "starting",
        "rollout": {"mode": "replace", "isolation": "optional"}});
    let file = dir.path().join("alice-task.json");
    std::fs::write(&file, task.to_string()).expect("write");
    refused(
        &as_tenant(
            &data,
            &alice,
            &["task", "create", "acme-web-x", "--ring", "2", "-f", file.to_str().expect("utf-8")],
        ),
        "alice's rollout task",
        &["made by deploying"],
    );
    // Alice's app is untouched: still v1, still serving.
    let out = as_tenant(&data, &alice, &["-o", "json", "app", "status", "acme-web"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["instances"].as_array().map(Vec::len), Some(2), "both of the manifest's instances: {v}");
    assert!(up.interrupt_and_clean().success(), "enjin up stopped cleanly");
}
