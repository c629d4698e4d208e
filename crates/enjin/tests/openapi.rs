//! The API does what its OpenAPI document says. schemathesis, a third-party OpenAPI fuzzer
//! (installed by `scripts/install-deps`), drives generated requests, valid and invalid, at every
//! operation of a real `enjin server`, and this test fails with its report on any disagreement
//! between server and document (an undocumented status, a valid request refused as malformed,
//! an invalid one accepted, a response off its schema) and on any 5xx.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Running;

/// Generated test cases per operation in the fuzzing phase (the coverage phase adds its own,
/// derived from each schema's edges): enough to find the classes of disagreement, few enough
/// that the run takes about a minute on two cores.
const MAX_EXAMPLES: &str = "30";

/// How to reach the API: its base URL, and the CA certificate to trust for it (the data
/// directory's ring 0 CA when the API serves TLS, as it does by default).
struct Endpoint {
    url: String,
    ca: Option<PathBuf>,
}

fn endpoint(server: &Running) -> Endpoint {
    Endpoint { url: server.url.clone(), ca: server.url.starts_with("https://").then(|| server.ca_path()) }
}

/// The schemathesis `scripts/install-deps` puts in its venv, or `ENJIN_SCHEMATHESIS`.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("ENJIN_SCHEMATHESIS") {
        return p.into();
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(c) => PathBuf::from(c),
        None => Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    };
    cache.join("enjin/venv/bin/schemathesis")
}

/// `GET /v1/openapi.json` with the admin token (the document is guarded), through the same
/// client as the other end-to-end tests, so that it follows them to TLS.
fn fetch_document(server: &Running) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(server.client().openapi()).expect("GET /v1/openapi.json")
}

#[test]
fn the_server_does_what_its_openapi_document_says() {
    let fuzzer = schemathesis();
    assert!(
        fuzzer.exists(),
        "schemathesis is not installed at {}: run scripts/install-deps (or set ENJIN_SCHEMATHESIS)",
        fuzzer.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // The fuzzer sends as one principal far more than the default rate, and from one address
    // far more failed authentications (it checks every route without a token and with a bad
    // one); 429s would only hide what it is looking for (the limiters have their own tests).
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data directory");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    std::fs::write(
        data.join("enjin.toml"),
        "[api]\nrate = \"unlimited\"\nfailed_auth_rate = \"unlimited\"\n",
    )
    .expect("enjin.toml");
    let server = Running::start("server", &data);
    let api = endpoint(&server);
    let token = server.token();

    let doc = fetch_document(&server);
    assert_eq!(doc["openapi"], "3.1.0", "an OpenAPI 3.1 document");
    let operations: usize = doc["paths"]
        .as_object()
        .map_or(0, |p| p.values().filter_map(|v| v.as_object()).map(|o| o.len()).sum());
    assert!(operations > 80, "the document lists every route: {operations} operations");
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, serde_json::to_vec(&doc).expect("encode")).expect("write the document");

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemathesis.toml");
    let mut cmd = Command::new(&fuzzer);
    cmd.arg("--config-file").arg(&config).arg("run").arg(&doc_path);
    cmd.args(["--url", &api.url]);
    cmd.args(["--header", &format!("Authorization: Bearer {token}")]);
    // Every check, on every operation; the stateful phase is off (it needs links the document
    // does not declare, and would chain writes across operations).
    cmd.args(["--checks", "all", "--phases", "examples,coverage,fuzzing"]);
    // One worker: schemathesis runs workers as threads, and two of them can trip a CPython 3.11
    // bug in concurrent `ast.parse` ("AST constructor recursion depth mismatch", a spurious error
    // from hypothesis describing a strategy). One is also faster on two cores (no GIL contention).
    cmd.args(["--max-examples", MAX_EXAMPLES, "--workers", "1", "--request-timeout", "10"]);
    cmd.args(["--generation-database", "none", "--no-color"]);
    if let Some(ca) = &api.ca {
        cmd.arg("--tls-verify").arg(ca);
    }
    // Anything schemathesis writes beside itself goes to the temporary directory.
    cmd.current_dir(dir.path());
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "schemathesis found disagreements between the server and its OpenAPI document \
         (exit {:?}, {:.0?}):\n{report}",
        out.status.code(),
        started.elapsed()
    );
    eprintln!("schemathesis passed in {:.0?}", started.elapsed());
}
