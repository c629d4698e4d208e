//! Manifests read from real directories and from text: what parses, and that every error
//! names the file, line and field at fault.

use std::fs;
use std::path::Path;

use enjin_app::manifest::{self, ManifestError, Sources};
use enjin_model::kinds::{AppManifest, validate_manifest};
use proptest::prelude::*;

fn from_text(enjin_toml: Option<&str>, procfile: Option<&str>) -> Result<AppManifest, ManifestError> {
    manifest::from_sources(&Sources {
        dir: Path::new(""),
        dir_name: Some("fallback"),
        enjin_toml,
        procfile,
        name_override: None,
    })
}

fn err(enjin_toml: &str) -> ManifestError {
    from_text(Some(enjin_toml), None).expect_err("the manifest is invalid")
}

fn app_dir(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(name);
    fs::create_dir(&dir).expect("mkdir");
    for (file, text) in files {
        fs::write(dir.join(file), text).expect("write");
    }
    (tmp, dir)
}

const TOO_MANY: &str = r#"name = "hello"
build = "make"

[processes.web]
command = "./serve"
# a hundred is the most
instances = 101
"#;

#[test]
fn too_many_instances_is_reported_at_its_line() {
    let e = err(TOO_MANY);
    assert_eq!(e.to_string(), "enjin.toml:7: processes.web.instances: must be at most 100");
    assert_eq!(e.line, Some(7));
    assert_eq!(e.field.as_deref(), Some("processes.web.instances"));
    assert_eq!(e.message, "must be at most 100");
}

#[test]
fn load_names_the_file_in_its_directory() {
    let (_tmp, dir) = app_dir("hello", &[("enjin.toml", TOO_MANY)]);
    let e = manifest::load(&dir, None).expect_err("invalid");
    assert_eq!(e.file, dir.join("enjin.toml"));
    assert_eq!(
        e.to_string(),
        format!("{}:7: processes.web.instances: must be at most 100", dir.join("enjin.toml").display())
    );
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = err("name = \"hello\"\n\n[processes.web]\ncommand = \"x\"\ncomand = \"y\"\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(5), Some("processes.web.comand")));
    assert!(e.message.starts_with("unknown key"), "{}", e.message);
    let e = err("[processes.web]\ncommand = \"  \"\n");
    assert_eq!(e.to_string(), "enjin.toml:2: processes.web.command: is empty");
    let e = err("nmae = \"hello\"\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("nmae")));
    let e = err("[processes.web]\ncommand = \"x\"\n[processes.web.health]\ntype = \"http\"\nretries = 3\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(5), Some("processes.web.health.retries")));
    let e = err("[processes.web]\ncommand = \"x\"\nresources = { memory = \"1G\" }\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("processes.web.resources")));
}

#[test]
fn bad_memory_strings_are_refused() {
    let e = err("[processes.web]\ncommand = \"x\"\n\nmemory = \"lots\"\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("processes.web.memory")));
    assert!(e.message.contains("\"lots\" is not a size"), "{}", e.message);
    let e = err("[processes.web]\ncommand = \"x\"\nmemory = 0\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("processes.web.memory")));
    let e = err("[processes.web]\ncommand = \"x\"\nmemory = true\n");
    assert_eq!(e.message, "must be a size such as \"256M\" or a number of bytes, not a boolean");
}

#[test]
fn memory_and_cpu_units() {
    let m = from_text(Some("[processes.web]\ncommand = \"x\"\nmemory = \"512k\"\ncpu = 1.5\n"), None)
        .expect("valid");
    assert_eq!(m.processes["web"].resources.memory_bytes, Some(512 * 1024));
    assert_eq!(m.processes["web"].resources.cpu_millis, Some(1500));
}

#[test]
fn bad_app_names_are_refused() {
    let e = err("name = \"Hello_World\"\n[processes.web]\ncommand = \"x\"\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("name")));
    assert!(e.message.contains("is not an app name"), "{}", e.message);

    // From the directory: lowercased, and refused with a hint when still not a name.
    let (_tmp, dir) = app_dir("My_App", &[("Procfile", "web: ./serve\n")]);
    let e = manifest::load(&dir, None).expect_err("my_app is not a name");
    assert_eq!(e.file, dir);
    assert_eq!(e.field.as_deref(), Some("name"));
    assert!(e.message.contains("\"my_app\"") && e.message.contains("pass --name"), "{}", e.message);
    assert_eq!(manifest::load(&dir, Some("my-app")).expect("override").name, "my-app");
    let e = manifest::load(&dir, Some("Nope")).expect_err("bad override");
    assert!(e.message.contains("--name"), "{}", e.message);

    let (_tmp, dir) = app_dir("MyApp", &[("Procfile", "web: ./serve\n")]);
    assert_eq!(manifest::load(&dir, None).expect("lowercased").name, "myapp");
}

#[test]
fn the_name_override_beats_enjin_toml() {
    let (_tmp, dir) =
        app_dir("dir", &[("enjin.toml", "name = \"from-file\"\n[processes.web]\ncommand = \"x\"\n")]);
    assert_eq!(manifest::load(&dir, None).expect("valid").name, "from-file");
    assert_eq!(manifest::load(&dir, Some("from-flag")).expect("valid").name, "from-flag");
}

#[test]
fn syntax_errors_have_toml_line_and_column() {
    let e = err("name = \"hello\"\n\n[processes.web]\ncommand = \"unterminated\n");
    assert_eq!(e.line, Some(4));
    assert_eq!(e.column, Some(24));
    assert_eq!(e.field, None);
    assert!(e.to_string().starts_with("enjin.toml:4:24: "), "{e}");
    let e = err("a = 1\na = 2\n");
    assert_eq!((e.line, e.column), (Some(2), Some(1)));
    assert_eq!(e.message, "duplicate key");
}

#[test]
fn health_checks() {
    let m = from_text(
        Some("[processes.web]\ncommand = \"x\"\n[processes.web.health]\ntype = \"http\"\npath = \"/up\"\nfailure_threshold = 5\n"),
        None,
    )
    .expect("valid");
    let h = m.processes["web"].health.clone().expect("health");
    assert_eq!((h.path.as_deref(), h.failure_threshold), (Some("/up"), 5));
    let e = err("[processes.web]\ncommand = \"x\"\n[processes.web.health]\ntype = \"udp\"\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("processes.web.health.type")));
    let e =
        err("[processes.web]\ncommand = \"x\"\n[processes.web.health]\ntype = \"http\"\ninterval_ms = 10\n");
    assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("processes.web.health")));
}

#[test]
fn procfiles_parse() {
    let m = from_text(
        None,
        Some("# processes\r\nweb: python3 -m http.server $PORT\r\n\r\n  worker:   ./work --queue=a:b  \n"),
    )
    .expect("valid");
    assert_eq!(m.name, "fallback");
    assert_eq!(m.processes.len(), 2);
    assert_eq!(m.processes["web"].command, "python3 -m http.server $PORT");
    assert_eq!(m.processes["web"].instances, 1);
    assert_eq!(m.processes["worker"].command, "./work --queue=a:b");
    assert_eq!(m.processes["worker"].instances, 1);
}

#[test]
fn procfile_errors_name_their_line() {
    let e = from_text(None, Some("web: ./serve\n\nthis is not a process\n")).expect_err("no colon");
    assert_eq!(e.to_string(), "Procfile:3: expected `name: command`");
    let e = from_text(None, Some("web: a\nweb: b\n")).expect_err("twice");
    assert_eq!(e.to_string(), "Procfile:2: processes.web: is defined twice (first on line 1)");
    let e = from_text(None, Some("web: a\nWorker_1: b\n")).expect_err("bad name");
    assert_eq!(
        (e.file.to_str(), e.line, e.field.as_deref()),
        (Some("Procfile"), Some(2), Some("processes.Worker_1"))
    );
    let e = from_text(None, Some("web: a\nworker:\n")).expect_err("no command");
    assert_eq!(e.to_string(), "Procfile:2: processes.worker.command: is empty");
    let e = from_text(None, Some("# nothing\n")).expect_err("empty");
    assert_eq!(e.to_string(), "Procfile: processes: an app needs at least one process type");
}

#[test]
fn enjin_toml_wins_over_the_procfile() {
    let toml = "name = \"both\"\n[processes.web]\ncommand = \"./serve --toml\"\ninstances = 3\n[processes.clock]\ninstances = 1\n";
    let procfile = "web: ./serve --procfile\nworker: ./work\nclock: ./tick\n";
    let m = from_text(Some(toml), Some(procfile)).expect("valid");
    assert_eq!(m.name, "both");
    assert_eq!(m.processes.len(), 3);
    assert_eq!((m.processes["web"].command.as_str(), m.processes["web"].instances), ("./serve --toml", 3));
    assert_eq!((m.processes["worker"].command.as_str(), m.processes["worker"].instances), ("./work", 1));
    // enjin.toml scales a process whose command is in the Procfile.
    assert_eq!(m.processes["clock"].command, "./tick");
    assert_eq!(validate_manifest(&m), Ok(()));

    // Errors still point at the file each piece came from.
    let e = from_text(Some(toml), Some("web: x\nclock: y\nBad: z\n")).expect_err("bad name");
    assert_eq!((e.file.to_str(), e.line), (Some("Procfile"), Some(3)));
    let e = from_text(Some("[processes.web]\ninstances = 500\n"), Some("web: x\n")).expect_err("too many");
    assert_eq!(e.to_string(), "enjin.toml:2: processes.web.instances: must be at most 100");
}

#[test]
fn a_directory_without_a_manifest_is_refused() {
    let (_tmp, dir) = app_dir("empty", &[]);
    let e = manifest::load(&dir, None).expect_err("nothing to read");
    assert_eq!(e.file, dir);
    assert!(e.message.contains("enjin.toml") && e.message.contains("Procfile"), "{}", e.message);
}

#[test]
fn non_utf8_manifests_are_refused_with_a_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("Procfile"), b"web: ok\nworker: \xff\n").expect("write");
    let e = manifest::load(tmp.path(), Some("app")).expect_err("not utf-8");
    assert_eq!(e.line, Some(2));
}

/// Lines that are each close to something `enjin.toml` understands, so that random
/// combinations reach past the syntax check.
fn toml_line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "name",
        "build",
        "command",
        "instances",
        "memory",
        "disk",
        "cpu",
        "pids",
        "type",
        "path",
        "interval_ms",
        "timeout_ms",
        "failure_threshold",
        "start_timeout_seconds",
        "PORT",
        "x",
    ]);
    let values = prop::sample::select(vec![
        "\"hello\"",
        "\"web\"",
        "\"256M\"",
        "\"1.5G\"",
        "\"http\"",
        "\"/\"",
        "0",
        "1",
        "-1",
        "101",
        "0.5",
        "1e400",
        "nan",
        "true",
        "[1, 2]",
        "{ a = 1 }",
        "\"\"",
        "0x10",
        "18446744073709551616",
    ]);
    let headers = prop::sample::select(vec![
        "[processes.web]",
        "[processes.worker]",
        "[processes.web.health]",
        "[env]",
        "[processes]",
        "[[processes]]",
        "[processes.Web]",
        "[name]",
    ]);
    prop_oneof![
        (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        headers.prop_map(str::to_string),
        "[ -~]{0,30}",
    ]
}

proptest! {
    #[test]
    fn parsing_never_panics(text in any::<String>()) {
        let _ = manifest::parse_enjin_toml(&text);
        let _ = manifest::parse_procfile(&text);
        let _ = from_text(Some(&text), Some(&text));
    }

    #[test]
    fn near_valid_manifests_parse_or_fail_with_a_place(lines in prop::collection::vec(toml_line(), 0..20)) {
        let text = lines.join("\n");
        match from_text(Some(&text), None) {
            Ok(m) => prop_assert_eq!(validate_manifest(&m), Ok(())),
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                if let Some(line) = e.line {
                    prop_assert!(line >= 1 && line <= lines.len().max(1), "line {} of {}", line, lines.len());
                }
            }
        }
    }

    #[test]
    fn procfile_lines(lines in prop::collection::vec("[a-zA-Z0-9_ :#$-]{0,20}", 0..10)) {
        let text = lines.join("\n");
        if let Err(e) = from_text(None, Some(&text))
            && let Some(line) = e.line
        {
            prop_assert!(line >= 1 && line <= lines.len());
        }
    }
}
