//! Arbitrary bytes as a package to unpack: unpacking must never panic, must leave either the
//! whole destination or nothing at all beside it, and nothing it unpacks may lead outside
//! the destination.
//!
//! The first byte picks the form: even, the rest is the package as uploaded (zstd); odd, the
//! rest is compressed here first, so that mutations reach the tar reader instead of dying in
//! zstd's checks. Seed it with packages of small trees (with symlinks and long names), and
//! with their tar streams behind an odd byte.

#![no_main]

use std::fs;
use std::path::Path;

use enjin_app::package::{self, UnpackLimits};
use libfuzzer_sys::fuzz_target;

/// Small limits keep every run fast; the limits themselves are fuzzed as much as anything.
const LIMITS: UnpackLimits = UnpackLimits {
    max_unpacked_bytes: 4 << 20,
    max_entries: 1000,
    max_ratio: 1000,
    ratio_grace_bytes: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let compressed;
    let pkg = if form & 1 == 0 {
        rest
    } else {
        compressed = zstd::encode_all(rest, 1).expect("compressing in memory");
        &compressed[..]
    };

    let out = tempfile::tempdir().expect("a temporary directory");
    let dest = out.path().join("app");
    let result = package::unpack(pkg, &dest, &LIMITS);
    let left: Vec<_> =
        fs::read_dir(out.path()).expect("readable").map(|e| e.expect("entry").file_name()).collect();
    match result {
        Ok(_) => {
            assert_eq!(left, ["app"], "an unpack left more than its destination");
            let root = dest.canonicalize().expect("the destination exists");
            stays_inside(&root, &root);
        }
        Err(_) => assert!(left.is_empty(), "a failed unpack left {left:?}"),
    }
});

/// Every path under `dir` that resolves at all resolves inside `root`.
fn stays_inside(root: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).expect("readable") {
        let path = entry.expect("entry").path();
        if let Ok(real) = path.canonicalize() {
            assert!(real.starts_with(root), "{} leads to {}", path.display(), real.display());
        }
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            stays_inside(root, &path);
        }
    }
}
