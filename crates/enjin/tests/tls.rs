//! The API over TLS as a user meets it: `enjin server` serves https with a certificate from
//! the data directory's CA, the CLI trusts that CA and no other, plain HTTP only on loopback
//! and only when asked, and `enjin login` keeps contexts in private files and switches between
//! them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{BIN, Running, cli, stderr, stdout};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).permissions().mode() & 0o777
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl").args(["-s", "-S", "-m", "10"]).args(args).output().expect("run curl")
}

#[test]
fn the_api_is_https_with_the_data_directorys_ca_and_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Running::start("server", &data);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let endpoint = std::fs::read_to_string(data.join("endpoint")).expect("endpoint file");
    assert_eq!(endpoint.trim(), server.url);
    assert_eq!(mode(&server.ca_path()), 0o600, "private like everything in the data directory");
    assert_eq!(mode(&data.join("pki/ring-0-ca.key")), 0o600, "its key is not");

    // curl: with the CA it gets in; without, it is refused (60: peer certificate not trusted).
    let ok = curl(&["--cacert", &server.ca_path().to_string_lossy(), &format!("{}/healthz", server.url)]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("\"ok\""), "{}", stdout(&ok));
    let refused = curl(&[&format!("{}/healthz", server.url)]);
    assert_eq!(refused.status.code(), Some(60), "{}", stderr(&refused));
    let plain = curl(&[&format!("{}/healthz", server.url.replacen("https", "http", 1))]);
    assert!(!plain.status.success(), "plain HTTP to the TLS port gets nothing: {}", stdout(&plain));

    // The CLI finds server, token and CA in the data directory, and with --server naming the
    // same server it still does.
    let out = cli(&data, &["node", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&data, &["--server", &server.url, "node", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Another CA, given explicitly, is the only one trusted: the server's certificate fails.
    // (The ring 1 CA of the same data directory did not issue it.)
    let other_ca = data.join("pki/ring-1-ca.crt");
    let out = cli(&data, &["--ca", &other_ca.to_string_lossy(), "node", "list"]);
    assert!(!out.status.success(), "a certificate from another CA is refused");
    assert!(
        stderr(&out).contains("cannot reach") || stderr(&out).contains("certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plain_http_only_when_asked_and_only_on_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["server", "--listen", "0.0.0.0:0", "--insecure-http"])
        .env("ENJIN_LOG", "warn")
        .output()
        .expect("run enjin");
    assert!(!out.status.success(), "refused");
    let err = stderr(&out);
    assert!(err.contains("--insecure-http") && err.contains("0.0.0.0:0"), "{err}");
    assert!(!data.join("endpoint").exists(), "refused before serving anything");

    let server = Running::start_with("server", &data, &["--insecure-http"]);
    assert!(server.url.starts_with("http://127.0.0.1:"), "{}", server.url);
    let out = cli(&data, &["node", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The CLI with its own config directory and no data directory of its own choosing.
fn user(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("ENJIN_SERVER")
        .env_remove("ENJIN_TOKEN")
        .env_remove("ENJIN_CA")
        .env_remove("ENJIN_CONTEXT")
        .env_remove("ENJIN_DATA_DIR")
        .output()
        .expect("run enjin")
}

fn labels(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", stderr(out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["label"].as_str().map(String::from))
        .collect()
}

#[test]
fn login_keeps_private_contexts_and_switches_between_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) =
        (Running::start("server", &dir.path().join("a")), Running::start("server", &dir.path().join("b")));
    let config = dir.path().join("config");
    let ca_a = a.ca_path().to_string_lossy().into_owned();
    let ca_b = b.ca_path().to_string_lossy().into_owned();

    // Refused logins change nothing: no CA for https, a wrong CA, a wrong token.
    let out = user(&config, &["login", "--server", &a.url, "--token", &a.token()]);
    assert!(!out.status.success() && stderr(&out).contains("--ca"), "{}", stderr(&out));
    let out = user(&config, &["login", "--server", &a.url, "--token", &a.token(), "--ca", &ca_b]);
    assert!(!out.status.success(), "A's certificate does not come from B's CA");
    let out = user(&config, &["login", "--server", &a.url, "--token", &b.token(), "--ca", &ca_a]);
    assert!(!out.status.success() && stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(!config.join("enjin/contexts.toml").exists(), "nothing kept");

    let out =
        user(&config, &["login", "--server", &a.url, "--token", &a.token(), "--ca", &ca_a, "--name", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&config.join("enjin")), 0o700);
    assert_eq!(mode(&config.join("enjin/contexts.toml")), 0o600);
    let kept = std::fs::read_to_string(config.join("enjin/contexts.toml")).expect("contexts");
    assert!(kept.contains(&a.token()) && kept.contains("BEGIN CERTIFICATE"), "token and CA kept");
    let out = user(&config, &["node", "create", "only-on-a"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out =
        user(&config, &["login", "--server", &b.url, "--token", &b.token(), "--ca", &ca_b, "--name", "b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(labels(&user(&config, &["-o", "json", "node", "list"])), Vec::<String>::new(), "b is current");
    assert_eq!(labels(&user(&config, &["--context", "a", "-o", "json", "node", "list"])), ["only-on-a"]);

    let list = user(&config, &["context", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = stdout(&list);
    assert!(text.lines().any(|l| l.starts_with('*') && l.contains(" b ")), "{text}");
    assert!(text.contains(&a.url) && text.contains(&b.url), "{text}");

    let out = user(&config, &["context", "use", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&user(&config, &["context", "current"])).trim(), "a");
    assert_eq!(labels(&user(&config, &["-o", "json", "node", "list"])), ["only-on-a"]);
    // An explicit server wins over the current context, and takes the token and CA that go
    // with it (b's), never a's.
    assert_eq!(
        labels(&user(&config, &["--server", &b.url, "-o", "json", "node", "list"])),
        Vec::<String>::new()
    );
    let out = user(&config, &["--server", "https://127.0.0.1:9", "--token", "x", "node", "list"]);
    assert!(!out.status.success() && stderr(&out).contains("--ca"), "a's CA is not lent to another server");

    let out = user(&config, &["context", "remove", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = user(&config, &["context", "current"]);
    assert!(!out.status.success(), "no current context after removing it");
    assert!(!stdout(&user(&config, &["context", "list"])).contains(&a.url));
    assert!(!user(&config, &["context", "use", "a"]).status.success());
}
