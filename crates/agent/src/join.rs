//! Joining ring 1 from another machine (`enjin agent join`): the machine makes its own bus
//! identity and TLS key, which never leave it; the join (`POST /v1/join`, authenticated by a
//! single-use join token bound to the machine's host node) whitelists the identity's public
//! half and signs a CSR; the answer becomes the same directory a parent prepares for the hosts
//! it runs itself, so `enjin agent --ring 1 --dir D` runs it from then on.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use enjin_bus::identity::Identity;
use enjin_model::Ring;
use enjin_model::api::{JoinRequest, JoinResponse};

use crate::{AgentConfig, AgentFile};

/// Why a join could not be prepared or its answer kept.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The directory already holds an agent: joining again would throw away its identity (and
    /// the children it supervises). Remove the directory first to join afresh.
    #[error(
        "{} already holds a joined agent ({}); remove the directory to join again",
        dir.display(),
        AgentConfig::FILE
    )]
    AlreadyJoined {
        /// The agent's directory.
        dir: PathBuf,
    },
    /// A key could not be generated.
    #[error("failed to generate the {what}: {message}")]
    Generate {
        /// Which key.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The server's answer cannot make an agent here: its ring, node or hub is missing or
    /// wrong, or its bundle is not hex.
    #[error("the join answer {0}")]
    Answer(String),
    /// A file of the directory could not be written.
    #[error("failed to write {}: {message}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// A join under way: the request to send and the private keys it was made from, kept in
/// memory until the answer comes.
#[derive(Debug)]
pub struct Joining {
    identity: Identity,
    tls_key_pem: String,
    /// The seed of the NATS user key whose public half the request carries.
    nats_seed: String,
    /// What to send on `POST /v1/join`.
    pub request: JoinRequest,
}

impl Joining {
    /// Fresh keys, and a request naming them under `label` (the key's label in `enjin key
    /// list`). The node comes from the join token.
    pub fn new(label: &str) -> Result<Joining, JoinError> {
        let identity = Identity::generate()
            .map_err(|e| JoinError::Generate { what: "bus identity", message: e.to_string() })?;
        let csr = enjin_pki::new_csr()
            .map_err(|e| JoinError::Generate { what: "TLS key", message: e.to_string() })?;
        let (nats_user, nats_seed) = enjin_bus::nats::auth::new_user()
            .map_err(|e| JoinError::Generate { what: "NATS user key", message: e.to_string() })?;
        let request = JoinRequest {
            label: label.to_string(),
            public_key: identity.key_id().to_string(),
            csr_pem: csr.csr_pem.clone(),
            node: None,
            nats_user: Some(nats_user),
        };
        Ok(Joining { identity, tls_key_pem: csr.key_pem, nats_seed, request })
    }

    /// Keep the answer in `dir` as an agent's directory (0700, every file 0600; `agent.json`
    /// last, so a directory without it was never whole). `hub` overrides where the hub is
    /// reached when the address the server knows it by is not the one this machine uses.
    pub fn finish(
        self,
        dir: &Path,
        answer: &JoinResponse,
        hub: Option<SocketAddr>,
        sandbox: bool,
    ) -> Result<AgentFile, JoinError> {
        let file = agent_file(answer, hub, sandbox)?;
        let bundle = decode_hex(&answer.bundle)
            .ok_or_else(|| JoinError::Answer("has a trust bundle that is not hex".into()))?;
        if dir.join(AgentConfig::FILE).exists() {
            return Err(JoinError::AlreadyJoined { dir: dir.to_path_buf() });
        }
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| JoinError::Write { path, message: e.to_string() }
        };
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(write_error(dir))?;
        let key = dir.join("bus.key");
        self.identity
            .save(&key)
            .map_err(|e| JoinError::Write { path: key.clone(), message: e.to_string() })?;
        for (name, contents) in [
            ("tls.key", self.tls_key_pem.as_bytes()),
            ("tls.crt", answer.cert_pem.as_bytes()),
            ("ca.crt", answer.ca_pem.as_bytes()),
            ("bundle.env", bundle.as_slice()),
        ] {
            let path = dir.join(name);
            enjin_sys::fs::write_private(&path, contents).map_err(write_error(&path))?;
        }
        if let Some(n) = &answer.nats {
            let creds =
                enjin_bus::nats::auth::NatsCredentials { jwt: n.jwt.clone(), seed: self.nats_seed.clone() };
            let path = dir.join("nats.creds");
            creds.write_creds_file(&path).map_err(write_error(&path))?;
        }
        AgentConfig::write(dir, &file)
            .map_err(|e| JoinError::Write { path: dir.join(AgentConfig::FILE), message: e.to_string() })?;
        Ok(file)
    }
}

/// The `agent.json` an answer makes: only a ring 1 host's, bound to its node, with a hub.
fn agent_file(answer: &JoinResponse, hub: Option<SocketAddr>, sandbox: bool) -> Result<AgentFile, JoinError> {
    if answer.ring != Ring::INFRASTRUCTURE {
        return Err(JoinError::Answer(format!(
            "is for ring {}; `enjin agent join` joins ring 1 hosts",
            answer.ring
        )));
    }
    let node = answer.node.ok_or_else(|| {
        JoinError::Answer(
            "names no node: the token was not made for a host (`enjin host add NAME` makes one)".into(),
        )
    })?;
    let hub = match (hub, answer.hub.as_deref(), &answer.nats) {
        (Some(h), _, _) => h,
        (None, Some(h), _) => {
            h.parse().map_err(|_| JoinError::Answer(format!("names a hub address that is not one: {h:?}")))?
        }
        // The bus is NATS: `hub` is not used; it names the server.
        (None, None, Some(n)) => {
            n.url.split_once("://").and_then(|(_, a)| a.trim_end_matches('/').parse().ok()).ok_or_else(
                || JoinError::Answer(format!("names a NATS server that is not tls://IP:PORT: {:?}", n.url)),
            )?
        }
        (None, None, None) => {
            return Err(JoinError::Answer(
                "names no hub: the server runs none (`enjin up` does); give its address with --hub".into(),
            ));
        }
    };
    Ok(AgentFile {
        ring: answer.ring.get(),
        node,
        hub,
        server_name: "localhost".into(),
        sandbox,
        rotate_key_after_seconds: None,
        nats: answer.nats.as_ref().map(|n| n.url.clone()),
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> JoinResponse {
        JoinResponse {
            ring: Ring::INFRASTRUCTURE,
            parent: uuid::Uuid::new_v4(),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
            bundle: "00ff10".into(),
            hub: Some("10.1.2.3:7481".into()),
            node: Some(uuid::Uuid::new_v4()),
            nats: None,
        }
    }

    #[test]
    fn an_answer_becomes_a_private_agent_directory_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("agent");
        let a = answer();
        let joining = Joining::new("machine-1").expect("keys");
        assert!(joining.request.csr_pem.contains("CERTIFICATE REQUEST"));
        let file = joining.finish(&dir, &a, None, true).expect("finish");
        assert_eq!(file.node, a.node.expect("node"));
        assert_eq!(file.hub.to_string(), "10.1.2.3:7481");
        assert_eq!(std::fs::read(dir.join("bundle.env")).expect("bundle"), [0x00, 0xff, 0x10]);
        for name in ["bus.key", "tls.key", "tls.crt", "ca.crt", "bundle.env", "agent.json"] {
            let mode = std::fs::metadata(dir.join(name)).expect(name).permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        let loaded = AgentConfig::load(&dir).expect("a loadable agent directory");
        assert!(loaded.sandbox);
        // A second join would replace the identity of a running agent.
        let again = Joining::new("machine-1").expect("keys").finish(&dir, &a, None, true);
        assert!(matches!(again, Err(JoinError::AlreadyJoined { .. })), "{again:?}");
    }

    #[test]
    fn answers_that_cannot_make_a_host_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("agent");
        type Spoil = fn(&mut JoinResponse);
        let cases: [(&str, Spoil); 4] = [
            ("names no node", |a| a.node = None),
            ("names no hub", |a| a.hub = None),
            ("not one", |a| a.hub = Some("nowhere".into())),
            ("not hex", |a| a.bundle = "zz".into()),
        ];
        for (expected, spoil) in cases {
            let mut a = answer();
            spoil(&mut a);
            let err = Joining::new("m").expect("keys").finish(&dir, &a, None, false).expect_err(expected);
            assert!(err.to_string().contains(expected), "{err}");
            assert!(!dir.exists(), "nothing written for an answer that {expected}");
        }
        let mut a = answer();
        a.hub = None;
        let file = Joining::new("m")
            .expect("keys")
            .finish(&dir, &a, Some("192.0.2.1:7000".parse().expect("addr")), false)
            .expect("a hub given on the command line");
        assert_eq!(file.hub.to_string(), "192.0.2.1:7000");
    }
}
