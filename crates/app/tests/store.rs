//! The package store on a real directory.

use enjin_app::package::digest_of;
use enjin_app::store::{PackageStore, StoreError};

fn store() -> (tempfile::TempDir, PackageStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PackageStore::open(dir.path().join("packages")).expect("open");
    (dir, store)
}

#[test]
fn identical_content_is_stored_once() {
    let (_dir, store) = store();
    let first = store.put(b"package bytes").expect("put");
    assert!(!first.existed);
    assert_eq!(first.package.digest, digest_of(b"package bytes"));
    assert_eq!(first.package.size, 13);
    let second = store.put(b"package bytes").expect("put again");
    assert!(second.existed);
    assert_eq!(second.package, first.package);
    assert_eq!(store.list().expect("list"), vec![first.package.clone()]);
    assert!(store.has(&first.package.digest).expect("has"));
    assert_eq!(store.size(&first.package.digest).expect("size"), 13);
}

#[test]
fn chunks_reassemble_to_the_same_digest() {
    let (_dir, store) = store();
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let put = store.put(&bytes).expect("put");
    let mut copy = Vec::new();
    loop {
        let chunk = store.read_chunk(&put.package.digest, copy.len() as u64, 4096).expect("chunk");
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= 4096);
        copy.extend_from_slice(&chunk);
    }
    assert_eq!(digest_of(&copy), put.package.digest);
    assert!(store.read_chunk(&put.package.digest, 1 << 40, 10).expect("past the end").is_empty());
    assert_eq!(store.read_chunk(&put.package.digest, 99_998, 10).expect("tail").len(), 2);
}

#[test]
fn bad_digests_are_refused() {
    let (dir, store) = store();
    let traversal = format!("sha256:../../{}", "a".repeat(58));
    for bad in ["", "sha256:abc", "sha512:00", traversal.as_str(), "sha256:../../../etc/passwd"] {
        assert!(matches!(store.has(bad), Err(StoreError::InvalidDigest { .. })), "has {bad}");
        assert!(matches!(store.read_chunk(bad, 0, 10), Err(StoreError::InvalidDigest { .. })), "read {bad}");
        assert!(matches!(store.delete(bad), Err(StoreError::InvalidDigest { .. })), "delete {bad}");
        assert!(matches!(store.size(bad), Err(StoreError::InvalidDigest { .. })), "size {bad}");
        assert!(matches!(store.put_verified(b"x", bad), Err(StoreError::InvalidDigest { .. })), "put {bad}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("readdir").count(), 1, "nothing made outside the store");
}

#[test]
fn verified_puts_refuse_a_mismatch() {
    let (_dir, store) = store();
    let wrong = digest_of(b"other");
    let e = store.put_verified(b"bytes", &wrong).expect_err("mismatch");
    assert!(matches!(&e, StoreError::DigestMismatch { expected, .. } if *expected == wrong), "{e}");
    assert!(store.list().expect("list").is_empty());
    let ok = store.put_verified(b"bytes", &digest_of(b"bytes")).expect("match");
    assert!(!ok.existed);
}

#[test]
fn missing_packages_and_deletes() {
    let (_dir, store) = store();
    let absent = digest_of(b"never stored");
    assert!(!store.has(&absent).expect("has"));
    assert!(matches!(store.size(&absent), Err(StoreError::NotFound { .. })));
    assert!(matches!(store.read_chunk(&absent, 0, 1), Err(StoreError::NotFound { .. })));
    let put = store.put(b"gone soon").expect("put");
    assert!(store.delete(&put.package.digest).expect("delete"));
    assert!(!store.delete(&put.package.digest).expect("delete again"));
    assert!(!store.has(&put.package.digest).expect("has"));
}

#[test]
fn a_damaged_copy_is_replaced() {
    let (_dir, store) = store();
    let put = store.put(b"the real bytes").expect("put");
    let path = store.path(&put.package.digest).expect("path");
    std::fs::write(&path, b"torn").expect("damage");
    assert!(!store.put(b"the real bytes").expect("put again").existed);
    assert_eq!(std::fs::read(&path).expect("read"), b"the real bytes");
}

#[test]
fn packages_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let digest = PackageStore::open(dir.path()).expect("open").put(b"kept").expect("put").package.digest;
    let store = PackageStore::open(dir.path()).expect("reopen");
    assert_eq!(store.read_chunk(&digest, 0, 100).expect("read"), b"kept");
}
