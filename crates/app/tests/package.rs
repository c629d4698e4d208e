//! Packing real directories, unpacking packages, and unpacking hostile ones built by hand.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use enjin_app::package::{self, PackError, PackLimits, UnpackError, UnpackLimits};
use proptest::prelude::*;

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, data).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A small app: a script, a library, an empty directory, and links.
fn sample_tree(root: &Path) {
    write(root, "run.sh", b"#!/bin/sh\necho hi\n", 0o755);
    write(root, "lib/util.py", b"def f(): pass\n", 0o644);
    write(root, "lib/deep/data.bin", &[7u8; 10_000], 0o600);
    fs::create_dir_all(root.join("empty")).expect("mkdir");
    symlink("lib/util.py", root.join("util.py")).expect("symlink");
    symlink("..", root.join("lib/up")).expect("symlink");
    symlink("missing", root.join("dangling")).expect("symlink");
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// Names left in `dir` (to check that a failed unpack left nothing behind).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    v.sort();
    v
}

#[test]
fn packing_is_deterministic() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    sample_tree(a.path());
    sample_tree(b.path());
    // Different times on every file of the second copy.
    let old = SystemTime::now() - Duration::from_secs(86_400 * 365);
    for rel in ["run.sh", "lib/util.py", "lib/deep/data.bin"] {
        fs::File::options()
            .write(true)
            .open(b.path().join(rel))
            .and_then(|f| f.set_modified(old))
            .expect("mtime");
    }
    let pa = package::pack(a.path()).expect("pack a");
    let pb = package::pack(b.path()).expect("pack b");
    assert_eq!(pa.digest, pb.digest);
    assert_eq!(pa.bytes, pb.bytes);
    assert_eq!(package::digest_of(&pa.bytes), pa.digest);
    assert_eq!(pa.files, 6, "three files and three symlinks");
    assert_eq!(pa.unpacked_bytes, 18 + 14 + 10_000);
    // And again from the same tree.
    assert_eq!(package::pack(a.path()).expect("repack").digest, pa.digest);

    // The entries are sorted, owned by 0 and dated 0.
    let tar = zstd::decode_all(&pa.bytes[..]).expect("zstd");
    let mut archive = tar::Archive::new(&tar[..]);
    let mut paths = Vec::new();
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let h = entry.header();
        assert_eq!((h.mtime().ok(), h.uid().ok(), h.gid().ok()), (Some(0), Some(0), Some(0)));
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        paths.push(entry.path().expect("path").into_owned());
    }
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[test]
fn contents_change_the_digest() {
    let a = tempfile::tempdir().expect("tempdir");
    sample_tree(a.path());
    let before = package::pack(a.path()).expect("pack").digest;
    fs::set_permissions(a.path().join("lib/util.py"), fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_ne!(package::pack(a.path()).expect("pack").digest, before, "modes are part of the package");
}

#[test]
fn round_trip_keeps_contents_modes_and_symlinks() {
    let src = tempfile::tempdir().expect("tempdir");
    sample_tree(src.path());
    let packed = package::pack(src.path()).expect("pack");
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("app");
    let stats = package::unpack(&packed.bytes, &dest, &UnpackLimits::default()).expect("unpack");
    assert_eq!((stats.files, stats.symlinks, stats.unpacked_bytes), (3, 3, packed.unpacked_bytes));
    assert_eq!(stats.directories, 3, "lib, lib/deep and empty");

    assert_eq!(fs::read(dest.join("run.sh")).expect("read"), b"#!/bin/sh\necho hi\n");
    assert_eq!(mode(&dest.join("run.sh")), 0o755);
    assert_eq!(mode(&dest.join("lib/util.py")), 0o644);
    assert_eq!(mode(&dest.join("lib/deep/data.bin")), 0o600);
    assert_eq!(fs::read(dest.join("lib/deep/data.bin")).expect("read"), vec![7u8; 10_000]);
    assert!(dest.join("empty").is_dir());
    assert_eq!(fs::read_link(dest.join("util.py")).expect("link"), PathBuf::from("lib/util.py"));
    assert_eq!(fs::read_link(dest.join("lib/up")).expect("link"), PathBuf::from(".."));
    assert_eq!(fs::read_link(dest.join("dangling")).expect("link"), PathBuf::from("missing"));
    assert_eq!(fs::read(dest.join("util.py")).expect("through the link"), b"def f(): pass\n");
    assert_eq!(names(out.path()), ["app"], "no temporary directory left");

    // The unpacked tree packs to the same package.
    assert_eq!(package::pack(&dest).expect("repack").digest, packed.digest);
}

#[test]
fn streaming_pack_matches_in_memory() {
    let src = tempfile::tempdir().expect("tempdir");
    sample_tree(src.path());
    let packed = package::pack(src.path()).expect("pack");
    let mut out = Vec::new();
    let summary = package::pack_to(src.path(), &mut out, &PackLimits::default()).expect("pack_to");
    assert_eq!((summary.digest, summary.size), (packed.digest, packed.bytes.len() as u64));
    assert_eq!(out, packed.bytes);

    let dest = tempfile::tempdir().expect("tempdir");
    let file = dest.path().join("pkg");
    fs::write(&file, &out).expect("write");
    let stats = package::unpack_reader(
        fs::File::open(&file).expect("open"),
        &dest.path().join("app"),
        &UnpackLimits::default(),
    )
    .expect("unpack from a reader");
    assert_eq!(stats.files, 3);
}

#[test]
fn git_and_ignored_paths_are_not_packed() {
    let src = tempfile::tempdir().expect("tempdir");
    let root = src.path();
    write(root, "app.py", b"x", 0o644);
    write(root, ".git/HEAD", b"ref", 0o644);
    write(root, "sub/.git", b"gitdir: ..", 0o644);
    write(root, "node_modules/a/index.js", b"x", 0o644);
    write(root, "web/node_modules/b.js", b"x", 0o644);
    write(root, "debug.log", b"x", 0o644);
    write(root, "logs/today.log", b"x", 0o644);
    write(root, "build/out", b"x", 0o644);
    write(root, "src/build/keep", b"x", 0o644);
    write(root, "cache", b"a file, not the cache/ directory", 0o644);
    write(root, ".enjinignore", b"# deps\nnode_modules\n*.log\n/build\ncache/\n", 0o644);
    let packed = package::pack(root).expect("pack");
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("app");
    package::unpack(&packed.bytes, &dest, &UnpackLimits::default()).expect("unpack");
    for kept in ["app.py", "src/build/keep", "cache", ".enjinignore", "logs", "sub", "web"] {
        assert!(dest.join(kept).symlink_metadata().is_ok(), "{kept} was packed");
    }
    for gone in
        [".git", "sub/.git", "node_modules", "web/node_modules", "debug.log", "logs/today.log", "build"]
    {
        assert!(dest.join(gone).symlink_metadata().is_err(), "{gone} was not packed");
    }
}

#[test]
fn bad_ignore_files_are_refused_with_their_line() {
    let src = tempfile::tempdir().expect("tempdir");
    write(src.path(), ".enjinignore", b"target\n!target/keep\n", 0o644);
    match package::pack(src.path()) {
        Err(PackError::Ignore { line, .. }) => assert_eq!(line, 2),
        other => panic!("expected an ignore error, got {other:?}"),
    }
}

#[test]
fn special_files_are_skipped() {
    let src = tempfile::tempdir().expect("tempdir");
    write(src.path(), "app.py", b"x", 0o644);
    let _socket = std::os::unix::net::UnixListener::bind(src.path().join("app.sock")).expect("bind");
    let packed = package::pack(src.path()).expect("pack");
    assert_eq!(packed.files, 1);
}

#[test]
fn escaping_symlinks_are_refused_when_packing() {
    let src = tempfile::tempdir().expect("tempdir");
    write(src.path(), "app.py", b"x", 0o644);
    symlink("/usr/bin/python3", src.path().join("python")).expect("symlink");
    assert!(matches!(package::pack(src.path()), Err(PackError::SymlinkEscapes { .. })));
    fs::remove_file(src.path().join("python")).expect("rm");
    symlink("../../etc", src.path().join("etc")).expect("symlink");
    let e = package::pack(src.path()).expect_err("escapes");
    assert!(e.to_string().contains("points outside the app directory"), "{e}");
}

#[test]
fn oversized_trees_are_refused_when_packing() {
    let src = tempfile::tempdir().expect("tempdir");
    write(src.path(), "big", &[0u8; 4096], 0o644);
    let limits = PackLimits { max_unpacked_bytes: 4095, ..PackLimits::default() };
    let e = package::pack_with(src.path(), &limits).expect_err("too large");
    assert!(matches!(e, PackError::TooLarge { limit: 4095, .. }), "{e}");
    assert!(e.to_string().contains("more than 4095 bytes"), "{e}");
    let limits = PackLimits { max_entries: 0, ..PackLimits::default() };
    assert!(matches!(package::pack_with(src.path(), &limits), Err(PackError::TooManyEntries { .. })));
}

// Hand-made archives, for what a real packer would never write.

#[derive(Debug, Clone, Copy)]
enum Ty {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
    Char,
}

/// One tar entry with the path written straight into the header, bypassing the checks the
/// tar writer would make.
fn raw_entry(path: &[u8], ty: Ty, data: &[u8], link: &[u8], mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_entry_type(match ty {
        Ty::File => tar::EntryType::Regular,
        Ty::Dir => tar::EntryType::Directory,
        Ty::Symlink => tar::EntryType::Symlink,
        Ty::HardLink => tar::EntryType::Link,
        Ty::Fifo => tar::EntryType::Fifo,
        Ty::Char => tar::EntryType::Char,
    });
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar: Vec<u8> = entries.concat();
    tar.extend_from_slice(&[0u8; 1024]);
    zstd::encode_all(&tar[..], 3).expect("zstd")
}

fn unpack_fails(pkg: &[u8], limits: &UnpackLimits) -> UnpackError {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("app");
    let e = package::unpack(pkg, &dest, limits).expect_err("the package is refused");
    assert!(names(out.path()).is_empty(), "a failed unpack left {:?}", names(out.path()));
    e
}

fn refused(entries: &[Vec<u8>]) -> UnpackError {
    unpack_fails(&archive(entries), &UnpackLimits::default())
}

#[test]
fn a_hand_made_package_unpacks() {
    let out = tempfile::tempdir().expect("tempdir");
    let pkg = archive(&[
        raw_entry(b"./", Ty::Dir, b"", b"", 0o755),
        raw_entry(b"a/b/file", Ty::File, b"hello", b"", 0o4755),
        raw_entry(b"a/hard", Ty::HardLink, b"", b"a/b/file", 0o644),
        raw_entry(b"ro", Ty::Dir, b"", b"", 0o1555),
        raw_entry(b"ro/inside", Ty::File, b"x", b"", 0o444),
    ]);
    let dest = out.path().join("app");
    let stats = package::unpack(&pkg, &dest, &UnpackLimits::default()).expect("unpack");
    assert_eq!((stats.files, stats.directories), (3, 3));
    assert_eq!(mode(&dest.join("a/b/file")), 0o755, "setuid is dropped, exec bits kept");
    assert_eq!(fs::read(dest.join("a/hard")).expect("read"), b"hello");
    assert_eq!(mode(&dest.join("ro")), 0o755, "sticky dropped, the owner keeps write");
    assert_eq!(mode(&dest.join("ro/inside")), 0o444);
    assert_eq!(mode(&dest), 0o755);
}

#[test]
fn parent_directories_are_refused() {
    let e = refused(&[raw_entry(b"../evil", Ty::File, b"x", b"", 0o644)]);
    assert!(matches!(&e, UnpackError::UnsafePath { path, .. } if path == "../evil"), "{e}");
    assert!(e.to_string().contains("'..'"), "{e}");
    refused(&[raw_entry(b"a/../../evil", Ty::File, b"x", b"", 0o644)]);
}

#[test]
fn absolute_paths_are_refused() {
    let e = refused(&[raw_entry(b"/tmp/evil", Ty::File, b"x", b"", 0o644)]);
    assert!(matches!(&e, UnpackError::UnsafePath { reason, .. } if reason.contains("absolute")), "{e}");
}

#[test]
fn escaping_symlinks_are_refused() {
    for target in [&b"../outside"[..], b"/etc", b"a/../../x"] {
        let e = refused(&[raw_entry(b"link", Ty::Symlink, b"", target, 0o777)]);
        assert!(matches!(e, UnpackError::SymlinkEscapes { .. }), "{e}");
    }
    // Each link stays inside on its own; together they leave.
    let e = refused(&[
        raw_entry(b"t", Ty::Symlink, b"", b".", 0o777),
        raw_entry(b"r", Ty::Symlink, b"", b"t/..", 0o777),
    ]);
    assert!(matches!(e, UnpackError::SymlinkEscapes { .. }), "{e}");
    // A loop cannot be resolved either.
    refused(&[
        raw_entry(b"a", Ty::Symlink, b"", b"b", 0o777),
        raw_entry(b"b", Ty::Symlink, b"", b"a", 0o777),
    ]);
}

#[test]
fn nothing_is_written_through_a_symlink() {
    let e = refused(&[
        raw_entry(b"sub", Ty::Dir, b"", b"", 0o755),
        raw_entry(b"link", Ty::Symlink, b"", b"sub", 0o777),
        raw_entry(b"link/file", Ty::File, b"x", b"", 0o644),
    ]);
    assert!(matches!(&e, UnpackError::UnsafePath { reason, .. } if reason.contains("symlink")), "{e}");
    // Nor may a link replace what was unpacked already.
    let e = refused(&[
        raw_entry(b"f", Ty::File, b"x", b"", 0o644),
        raw_entry(b"f", Ty::Symlink, b"", b"g", 0o777),
    ]);
    assert!(matches!(e, UnpackError::Duplicate { .. }), "{e}");
}

#[test]
fn hard_links_must_point_at_unpacked_files() {
    for target in [&b"/etc/passwd"[..], b"../x", b"missing"] {
        let e = refused(&[raw_entry(b"h", Ty::HardLink, b"", target, 0o644)]);
        assert!(matches!(e, UnpackError::BadHardLink { .. }), "{e}");
    }
    let e = refused(&[
        raw_entry(b"d", Ty::Dir, b"", b"", 0o755),
        raw_entry(b"h", Ty::HardLink, b"", b"d", 0o644),
    ]);
    assert!(matches!(e, UnpackError::BadHardLink { .. }), "{e}");
}

#[test]
fn devices_and_fifos_are_refused() {
    let e = refused(&[raw_entry(b"fifo", Ty::Fifo, b"", b"", 0o644)]);
    assert!(matches!(e, UnpackError::SpecialFile { kind: "fifo", .. }), "{e}");
    let e = refused(&[raw_entry(b"null", Ty::Char, b"", b"", 0o644)]);
    assert!(matches!(e, UnpackError::SpecialFile { .. }), "{e}");
}

#[test]
fn oversized_packages_are_refused() {
    let big = vec![0u8; 100_000];
    let pkg = archive(&[raw_entry(b"a", Ty::File, &big, b"", 0o644)]);
    let limits = UnpackLimits { max_unpacked_bytes: 99_999, ..UnpackLimits::default() };
    let e = unpack_fails(&pkg, &limits);
    assert!(matches!(e, UnpackError::TooLarge { limit: 99_999 }), "{e}");

    let many: Vec<Vec<u8>> =
        (0..20).map(|i| raw_entry(format!("f{i}").as_bytes(), Ty::File, b"", b"", 0o644)).collect();
    let limits = UnpackLimits { max_entries: 10, ..UnpackLimits::default() };
    let e = unpack_fails(&archive(&many), &limits);
    assert!(matches!(e, UnpackError::TooManyEntries { limit: 10 }), "{e}");

    // A megabyte of zeros compresses to almost nothing.
    let zeros = vec![0u8; 1 << 20];
    let pkg = archive(&[raw_entry(b"zeros", Ty::File, &zeros, b"", 0o644)]);
    let limits = UnpackLimits { max_ratio: 10, ratio_grace_bytes: 64 * 1024, ..UnpackLimits::default() };
    let e = unpack_fails(&pkg, &limits);
    assert!(matches!(e, UnpackError::RatioExceeded { limit: 10 }), "{e}");
    // Within the grace, the same package is fine.
    let out = tempfile::tempdir().expect("tempdir");
    package::unpack(&pkg, &out.path().join("app"), &UnpackLimits::default()).expect("small enough");
}

#[test]
fn broken_packages_are_refused() {
    assert!(matches!(unpack_fails(b"", &UnpackLimits::default()), UnpackError::NotZstd));
    assert!(matches!(unpack_fails(b"plain tar?", &UnpackLimits::default()), UnpackError::NotZstd));
    let pkg = archive(&[raw_entry(b"a", Ty::File, &[1u8; 5000], b"", 0o644)]);
    let e = unpack_fails(&pkg[..pkg.len() / 2], &UnpackLimits::default());
    assert!(matches!(e, UnpackError::Corrupt { .. }), "{e}");
    // A header whose checksum is wrong.
    let mut entry = raw_entry(b"a", Ty::File, b"x", b"", 0o644);
    entry[0] = b'b';
    let e = unpack_fails(&archive(&[entry]), &UnpackLimits::default());
    assert!(matches!(e, UnpackError::Corrupt { .. }), "{e}");
}

#[test]
fn an_existing_destination_is_left_alone() {
    let src = tempfile::tempdir().expect("tempdir");
    write(src.path(), "a", b"x", 0o644);
    let packed = package::pack(src.path()).expect("pack");
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("app");
    fs::create_dir(&dest).expect("mkdir");
    fs::write(dest.join("mine"), b"keep").expect("write");
    let e = package::unpack(&packed.bytes, &dest, &UnpackLimits::default()).expect_err("exists");
    assert!(matches!(e, UnpackError::DestExists { .. }), "{e}");
    assert_eq!(names(&dest), ["mine"]);
}

fn small_limits() -> UnpackLimits {
    UnpackLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 200,
        max_ratio: 1000,
        ratio_grace_bytes: 1 << 20,
    }
}

fn unpack_anything(pkg: &[u8]) {
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("app");
    match package::unpack(pkg, &dest, &small_limits()) {
        Ok(_) => assert_eq!(names(out.path()), ["app"]),
        Err(_) => assert!(names(out.path()).is_empty(), "a failed unpack left {:?}", names(out.path())),
    }
}

fn entry_strategy() -> impl Strategy<Value = Vec<u8>> {
    let paths = prop::sample::select(vec![
        &b"a"[..],
        b"a/b",
        b"b",
        b"./c",
        b"../x",
        b"/abs",
        b"a/../b",
        b"",
        b"d/",
        b"t",
        b"t/x",
    ]);
    let links = prop::sample::select(vec![&b""[..], b"a", b".", b"..", b"t/..", b"a/b", b"/etc", b"t"]);
    let types = prop::sample::select(vec![Ty::File, Ty::Dir, Ty::Symlink, Ty::HardLink, Ty::Fifo]);
    (paths, types, prop::collection::vec(any::<u8>(), 0..600), links, 0u32..0o10000)
        .prop_map(|(p, t, data, l, mode): (&[u8], Ty, Vec<u8>, &[u8], u32)| raw_entry(p, t, &data, l, mode))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn unpack_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        unpack_anything(&bytes);
        // Behind a valid zstd frame, so the bytes reach the tar reader.
        unpack_anything(&zstd::encode_all(&bytes[..], 1).expect("zstd"));
    }

    #[test]
    fn unpack_never_panics_on_hostile_archives(entries in prop::collection::vec(entry_strategy(), 0..8)) {
        unpack_anything(&archive(&entries));
    }

    #[test]
    fn unpack_never_panics_on_damaged_packages(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut tar = [
            raw_entry(b"dir", Ty::Dir, b"", b"", 0o755),
            raw_entry(b"dir/file", Ty::File, b"hello world", b"", 0o644),
            raw_entry(b"link", Ty::Symlink, b"", b"dir/file", 0o777),
        ]
        .concat();
        tar.extend_from_slice(&[0u8; 1024]);
        for (at, byte) in flips {
            let i = at.index(tar.len());
            tar[i] ^= byte;
        }
        unpack_anything(&zstd::encode_all(&tar[..], 1).expect("zstd"));
    }
}

#[test]
fn long_paths_and_link_targets_round_trip() {
    let src = tempfile::tempdir().expect("tempdir");
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    write(src.path(), &long_file, b"deep", 0o644);
    symlink(&long_file, src.path().join("short")).expect("symlink");
    let packed = package::pack(src.path()).expect("pack");
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("app");
    package::unpack(&packed.bytes, &dest, &UnpackLimits::default()).expect("unpack");
    assert_eq!(fs::read(dest.join(&long_file)).expect("read"), b"deep");
    assert_eq!(fs::read_link(dest.join("short")).expect("link"), PathBuf::from(&long_file));
}
