//! A node's Ed25519 identity on the ring bus: the secret key that signs its envelopes, the public
//! key (`KeyId`) others whitelist, and the key file the secret lives in. The secret must never
//! leave this module except as a signature: no `Debug`, `Display` or serde for it, and the key
//! file is private to its owner from the moment it exists.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::private_file::{ReadPrivateError, read_private, wipe, write_private};

/// An Ed25519 public key, which is also the key's identity on the bus: whitelists name keys, not
/// hosts, so a node that moves keeps its identity and a node that is rebuilt gets a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

impl KeyId {
    /// Wraps 32 bytes as a key id without checking that they are a curve point (see
    /// [`KeyId::verifying_key`]); trust bundles check that when they are validated.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The compressed Ed25519 public key, as it goes on the wire.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits, for logs and labels; never for comparisons (32 bits collide).
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    /// The key as ed25519-dalek sees it, or `None` when the bytes are not a point on the curve.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a string is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseKeyIdError {
    /// The string is not 64 ASCII characters long; holds its length in characters.
    #[error("key id must be 64 hex digits, got {0} characters")]
    Length(usize),
    /// Only lowercase is accepted so that a key id has one spelling: ids copied between bundles,
    /// logs and configs then also compare equal as text.
    #[error("key id must be lowercase hex, found {0:?} at position {1}")]
    Digit(char, usize),
}

impl FromStr for KeyId {
    type Err = ParseKeyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_hex32(s).map(Self)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn decode_hex32(s: &str) -> Result<[u8; 32], ParseKeyIdError> {
    let chars = s.chars().count();
    if chars != 64 || s.len() != 64 {
        return Err(ParseKeyIdError::Length(chars));
    }
    let digit = |i: usize| -> Result<u8, ParseKeyIdError> {
        let c = s.as_bytes()[i];
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(ParseKeyIdError::Digit(char::from(c), i)),
        }
    };
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (digit(2 * i)? << 4) | digit(2 * i + 1)?;
    }
    Ok(out)
}

/// A node's signing identity. Deliberately not `Clone`: each copy of a secret is one more place
/// it can leak from, so holders borrow it instead.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

/// The operating system could not give us random bytes for a new key.
#[derive(Debug, thiserror::Error)]
#[error("failed to generate an ed25519 identity: no randomness from the operating system: {0}")]
pub struct GenerateError(getrandom::Error);

/// Why a key file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SaveKeyError {
    /// The path ends in `..` or is a root, so there is no file to write.
    #[error("key file path {} has no file name", .0.display())]
    NoFileName(PathBuf),
    /// Creating, writing, syncing or renaming the file failed; the temporary file is removed
    /// and any key file already at `path` is left as it was.
    #[error("failed to write key file {}: {source}", path.display())]
    Io {
        /// The key file's path.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// Why a key file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadKeyError {
    /// The file could not be opened, examined or read (missing, no permission).
    #[error("failed to read key file {}: {source}", path.display())]
    Io {
        /// The key file's path.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The path names a directory, FIFO, device or socket.
    #[error("key file {} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// Group or others have some access to the file, so the secret may not be this node's
    /// alone; the file is not read.
    #[error(
        "key file {} has mode {mode:04o}, refusing to use it: group and others must have no access \
         (chmod 600 it)",
        path.display()
    )]
    Permissions {
        /// The key file's path.
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// The contents are not a version 1 key file (wrong header, bad hex, too long); the
    /// reason says which part.
    #[error("key file {} is not an enjin bus key file: {reason}", path.display())]
    Format {
        /// The key file's path.
        path: PathBuf,
        /// Which part of the format is wrong.
        reason: &'static str,
    },
    /// The secret parses but its public key is not the one on the key-id line: the file is
    /// damaged or was edited by hand.
    #[error("key file {} is corrupt: its key-id line does not match its secret", .0.display())]
    KeyIdMismatch(PathBuf),
}

/// First line of a key file; the version lets the format change without guessing.
const KEY_FILE_HEADER: &str = "enjin-bus-identity v1";
/// A valid key file is about 190 bytes; reading more than this means it is not one.
const KEY_FILE_MAX_LEN: u64 = 1024;
const HEX: &[u8; 16] = b"0123456789abcdef";

impl Identity {
    /// A fresh identity from the operating system's random source.
    pub fn generate() -> Result<Self, GenerateError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(GenerateError)?;
        let identity = Self::from_secret_bytes(&secret);
        wipe(&mut secret);
        Ok(identity)
    }

    /// An identity from its 32-byte secret (the Ed25519 seed).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(secret) }
    }

    /// The public half: what trust bundles list and envelopes name as their sender.
    pub fn key_id(&self) -> KeyId {
        KeyId(self.key.verifying_key().to_bytes())
    }

    /// A plain Ed25519 signature over `message`, with no domain prefix added: callers that
    /// sign protocol data prefix their own domain (as envelopes do with
    /// [`crate::envelope::SIGNATURE_DOMAIN`]).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Writes the key file atomically: the secret goes to a new temporary file that is created
    /// with mode 0600 (never briefly readable by others, whatever the umask), is fsynced, then
    /// renamed over `path`, and the directory is fsynced so the rename survives a crash. An
    /// existing file at `path` is replaced.
    pub fn save(&self, path: &Path) -> Result<(), SaveKeyError> {
        if path.file_name().is_none() {
            return Err(SaveKeyError::NoFileName(path.to_path_buf()));
        }
        let mut text = self.key_file_text();
        let written = write_private(path, &text);
        wipe(&mut text);
        written.map_err(|source| SaveKeyError::Io { path: path.to_path_buf(), source })
    }

    /// Reads a key file written by [`Identity::save`]. Refuses a file that group or others can
    /// read, write or execute: a secret others could read may already be someone else's, and one
    /// others could write may be someone else's key put there for us to use.
    pub fn load(path: &Path) -> Result<Self, LoadKeyError> {
        let mut buf = read_private(path, KEY_FILE_MAX_LEN).map_err(|e| match e {
            ReadPrivateError::Io(source) => LoadKeyError::Io { path: path.to_path_buf(), source },
            ReadPrivateError::NotAFile => LoadKeyError::NotAFile(path.to_path_buf()),
            ReadPrivateError::Permissions(mode) => {
                LoadKeyError::Permissions { path: path.to_path_buf(), mode }
            }
        })?;
        let parsed = parse_key_file(&buf);
        wipe(&mut buf);
        let format = |reason| LoadKeyError::Format { path: path.to_path_buf(), reason };
        let (mut secret, key_id) = parsed.map_err(format)?;
        let identity = Self::from_secret_bytes(&secret);
        wipe(&mut secret);
        if identity.key_id() != key_id {
            return Err(LoadKeyError::KeyIdMismatch(path.to_path_buf()));
        }
        Ok(identity)
    }

    /// The key file: a header, the secret, and the public key id. The key id lets an operator
    /// see which key a file holds without tools, and lets `load` detect a damaged secret.
    fn key_file_text(&self) -> Vec<u8> {
        let mut secret = self.key.to_bytes();
        let mut text = Vec::with_capacity(200);
        text.extend_from_slice(KEY_FILE_HEADER.as_bytes());
        text.extend_from_slice(b"\nsecret ");
        for b in secret {
            text.push(HEX[usize::from(b >> 4)]);
            text.push(HEX[usize::from(b & 0xf)]);
        }
        wipe(&mut secret);
        text.extend_from_slice(format!("\nkey-id {}\n", self.key_id()).as_bytes());
        text
    }
}

fn parse_key_file(buf: &[u8]) -> Result<([u8; 32], KeyId), &'static str> {
    if buf.len() as u64 > KEY_FILE_MAX_LEN {
        return Err("file is too large");
    }
    let text = std::str::from_utf8(buf).map_err(|_| "file is not UTF-8 text")?;
    let mut lines = text.lines();
    if lines.next() != Some(KEY_FILE_HEADER) {
        return Err("first line is not \"enjin-bus-identity v1\"");
    }
    let secret = lines
        .next()
        .and_then(|l| l.strip_prefix("secret "))
        .ok_or("second line is not \"secret <64 hex digits>\"")?;
    let secret = decode_hex32(secret).map_err(|_| "the secret is not 64 lowercase hex digits")?;
    let key_id = lines
        .next()
        .and_then(|l| l.strip_prefix("key-id "))
        .ok_or("third line is not \"key-id <64 hex digits>\"")?;
    let key_id = key_id.parse().map_err(|_| "the key id is not 64 lowercase hex digits")?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err("unexpected lines after the key id");
    }
    Ok((secret, key_id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::private_file::write_new_private;

    fn fixed() -> Identity {
        Identity::from_secret_bytes(&[7u8; 32])
    }

    #[test]
    fn key_id_round_trips_through_hex_and_serde() {
        let id = fixed().key_id();
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(hex.parse::<KeyId>().unwrap(), id);
        assert_eq!(id.short(), hex[..8]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
    }

    #[test]
    fn key_id_parse_rejects_bad_text() {
        let hex = fixed().key_id().to_string();
        assert_eq!("abc".parse::<KeyId>(), Err(ParseKeyIdError::Length(3)));
        assert!(matches!(hex.to_uppercase().parse::<KeyId>(), Err(ParseKeyIdError::Digit(..))));
        let mut bad = hex.clone();
        bad.replace_range(10..11, "g");
        assert_eq!(bad.parse::<KeyId>(), Err(ParseKeyIdError::Digit('g', 10)));
        // 64 bytes but fewer characters: must not slice inside a character.
        let multibyte = format!("é{}", &hex[..62]);
        assert!(matches!(multibyte.parse::<KeyId>(), Err(ParseKeyIdError::Length(63))));
        assert!(serde_json::from_str::<KeyId>("\"zz\"").is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let identity = fixed();
        let secret_hex = KeyId([7u8; 32]).to_string();
        let debug = format!("{identity:?}");
        assert!(!debug.contains(&secret_hex), "{debug}");
        assert!(!debug.contains("[7, 7"), "{debug}");
        assert!(debug.contains(&identity.key_id().to_string()));
    }

    #[test]
    fn signatures_verify_under_the_key_id() {
        let identity = Identity::generate().unwrap();
        let sig = identity.sign(b"hello");
        let vk = identity.key_id().verifying_key().unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        assert!(vk.verify_strict(b"hello", &sig).is_ok());
        assert!(vk.verify_strict(b"hellO", &sig).is_err());
        assert_ne!(Identity::generate().unwrap().key_id(), identity.key_id());
    }

    #[test]
    fn save_writes_0600_and_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let identity = Identity::generate().unwrap();
        identity.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(Identity::load(&path).unwrap().key_id(), identity.key_id());
        // Replacing leaves no temporary files behind.
        Identity::generate().unwrap().save(&path).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.key")]);
    }

    #[test]
    fn load_refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fixed().save(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Identity::load(&path).unwrap_err();
            assert!(matches!(err, LoadKeyError::Permissions { mode: m, .. } if m == mode), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("node.key") && msg.contains(&format!("{mode:04o}")), "{msg}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Identity::load(&path).unwrap().key_id(), fixed().key_id());
    }

    #[test]
    fn load_rejects_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let write = |text: &str| {
            let _ = fs::remove_file(&path);
            write_new_private(&path, text.as_bytes()).unwrap();
        };
        let good = String::from_utf8(fixed().key_file_text()).unwrap();

        write("not a key\n");
        assert!(matches!(Identity::load(&path), Err(LoadKeyError::Format { .. })));
        write(&good.replace("secret ", "secret x"));
        assert!(matches!(Identity::load(&path), Err(LoadKeyError::Format { .. })));
        write(&format!("{good}extra\n"));
        assert!(matches!(Identity::load(&path), Err(LoadKeyError::Format { .. })));
        let other = Identity::from_secret_bytes(&[8u8; 32]).key_id().to_string();
        write(&good.replace(&fixed().key_id().to_string(), &other));
        assert!(matches!(Identity::load(&path), Err(LoadKeyError::KeyIdMismatch(_))));
        write(&"x".repeat(2000));
        assert!(matches!(Identity::load(&path), Err(LoadKeyError::Format { .. })));
        write(&good);
        assert!(Identity::load(&path).is_ok());

        assert!(matches!(Identity::load(dir.path()), Err(LoadKeyError::NotAFile(_))));
        assert!(matches!(Identity::load(&dir.path().join("missing")), Err(LoadKeyError::Io { .. })));
    }
}
