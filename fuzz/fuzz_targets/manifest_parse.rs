//! Arbitrary bytes as an app's `enjin.toml` and as its `Procfile`: parsing must never panic,
//! whatever parses and merges must pass the model's manifest rules, and every error must
//! point at a line that exists.
//!
//! A NUL byte, if there is one, splits the input into an `enjin.toml` (before) and a
//! `Procfile` (after), so that merging two different files is fuzzed too. Seed it with real
//! manifests (`examples/*/enjin.toml`, `Procfile`s) so mutations start from valid TOML.

#![no_main]

use std::path::Path;

use enjin_app::manifest::{self, Sources};
use enjin_model::kinds::validate_manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = manifest::parse_enjin_toml(&text);
    let _ = manifest::parse_procfile(&text);

    let (toml, procfile) = text.split_once('\0').unwrap_or((&text, &text));
    let lines = text.matches('\n').count() + 1;
    for (enjin_toml, procfile) in [(Some(toml), None), (None, Some(procfile)), (Some(toml), Some(procfile))] {
        let sources =
            Sources { dir: Path::new(""), dir_name: Some("fuzz"), enjin_toml, procfile, name_override: None };
        match manifest::from_sources(&sources) {
            Ok(m) => assert!(validate_manifest(&m).is_ok(), "accepted a manifest the model refuses: {m:?}"),
            Err(e) => {
                assert!(!e.message.is_empty(), "an error without a message");
                if let Some(line) = e.line {
                    assert!((1..=lines).contains(&line), "line {line} of a {lines}-line input: {e}");
                }
            }
        }
    }
});
