//! A deployed app's releases. An app environment is a ring-2 compartment, its process types
//! are tiers and its instances ring-2 nodes; what the seed's vocabulary cannot say is which
//! code and configuration they run, and which of them is live: that is a release.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Kind, Resources, Spec, reference, text};
use crate::{FieldError, OnDelete, Reference, Ring, RingRule};

/// The most instances one process type may have.
pub const MAX_INSTANCES: u32 = 100;

/// How an app's instances are health-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// An HTTP GET on `path` answers 2xx or 3xx.
    Http,
    /// The port accepts a TCP connection.
    Tcp,
    /// The process is alive.
    Process,
}

/// A process type's health check, as the manifest gives it; it decides when a new instance
/// counts as started and when a running one leaves the routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// How health is checked. Written `type` in the JSON.
    #[serde(rename = "type")]
    pub kind: HealthKind,
    /// For http checks (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between checks, in milliseconds (default 1,000; at least 100).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How long one check may take before it counts as failed, in milliseconds (default 1,000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that take an instance out of the routes.
    #[serde(default = "default_failures")]
    pub failure_threshold: u32,
    /// How long a new instance may take to become healthy before the deploy fails.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_seconds: u64,
}

fn default_interval_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_failures() -> u32 {
    2
}

fn default_start_timeout() -> u64 {
    60
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthKind::Tcp,
            path: None,
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            failure_threshold: default_failures(),
            start_timeout_seconds: default_start_timeout(),
        }
    }
}

/// One process type of an app (`web`, `worker`): what it runs and how many run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessType {
    /// A shell command line, run with `/bin/sh -c` in the app's directory; `$PORT` is the
    /// port ring 1 gave the instance.
    #[schemars(length(max = 4096), regex(pattern = super::TEXT_PATTERN))]
    pub command: String,
    /// How many instances of this type run (default 1, at most [`MAX_INSTANCES`]); 0 runs none.
    #[serde(default = "one")]
    pub instances: u32,
    /// What each instance may use; every limit absent by default.
    #[serde(default)]
    pub resources: Resources,
    /// Absent: a `web` process is checked on its port (tcp), others by liveness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

fn one() -> u32 {
    1
}

impl ProcessType {
    /// The health check in force: the given one, or the default for the process's name.
    pub fn health_or_default(&self, name: &str) -> HealthCheck {
        self.health.clone().unwrap_or_else(|| HealthCheck {
            kind: if name == WEB { HealthKind::Tcp } else { HealthKind::Process },
            ..HealthCheck::default()
        })
    }
}

/// The process type that the router sends HTTP traffic to.
pub const WEB: &str = "web";

/// What an app says of itself (`enjin.toml` or a `Procfile`), after parsing and validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppManifest {
    /// The app's name: a DNS label, its host name under the router's domain.
    #[schemars(regex(pattern = APP_NAME_PATTERN), length(min = 1, max = 40))]
    pub name: String,
    /// A command `enjin deploy` runs in the app's directory before packing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096), regex(pattern = super::TEXT_PATTERN))]
    pub build: Option<String>,
    /// Environment variables every instance gets; `PORT` is refused (the platform sets it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The process types by name (`web`, `worker`), at least one; only [`WEB`] receives HTTP
    /// traffic from the router.
    #[schemars(extend("propertyNames" = {"pattern": APP_NAME_PATTERN, "maxLength": 40}))]
    pub processes: BTreeMap<String, ProcessType>,
}

/// A package in the content-addressed package store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    /// `sha256:` and 64 lowercase hex digits of the packed (tar + zstd) bytes.
    #[schemars(regex(pattern = "^sha256:[0-9a-f]{64}$"))]
    pub digest: String,
    /// Size of the packed bytes, in bytes.
    pub size: u64,
}

impl PackageRef {
    /// Whether `digest` is `sha256:` followed by 64 lowercase hex digits.
    pub fn valid_digest(digest: &str) -> bool {
        digest.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }
}

/// A release's life. `active` is the one whose instances serve; at most one per app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseState {
    /// Its instances are starting beside the active release's.
    Deploying,
    /// The release whose instances serve the app; at most one per app.
    Active,
    /// Replaced by a newer release; kept for rollbacks.
    Superseded,
    /// Its instances never became healthy; it was rolled back.
    Failed,
}

/// A deployed app's code and configuration, numbered per app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// The app environment (a ring-2 compartment of type app-environment).
    pub app: Uuid,
    /// The release's number within its app: 1 for the first, then increasing.
    pub version: u32,
    /// The package its instances unpack and run.
    pub package: PackageRef,
    /// The app's manifest as deployed: its process types, their counts and environment.
    pub manifest: AppManifest,
    /// Where the release is in its life; moves as rollouts and rollbacks go.
    pub state: ReleaseState,
    /// How it came about: `deploy`, `rollback to v2`, `restart`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024), regex(pattern = super::TEXT_PATTERN))]
    pub description: String,
}

impl Spec for ReleaseSpec {
    const KIND: Kind = Kind::Release;

    fn validate(&self, ring: Ring) -> Result<(), FieldError> {
        if ring != Ring::PLATFORM {
            return Err(FieldError::new("ring", "releases are ring 2 objects"));
        }
        if self.version == 0 {
            return Err(FieldError::new("spec.version", "versions start at 1"));
        }
        if !PackageRef::valid_digest(&self.package.digest) {
            return Err(FieldError::new("spec.package.digest", "is not sha256: and 64 lowercase hex digits"));
        }
        text("spec.description", &self.description, 1024)?;
        validate_manifest(&self.manifest)
            .map_err(|e| FieldError::new(format!("spec.manifest.{}", e.field), e.message))
    }

    fn references(&self) -> Vec<Reference> {
        vec![reference("spec.app", Kind::Compartment, self.app, RingRule::Same, OnDelete::Cascade)]
    }

    fn compartment(&self) -> Option<Uuid> {
        Some(self.app)
    }

    fn parent(&self) -> Option<Uuid> {
        Some(self.app)
    }
}

/// [`valid_app_name`] as a JSON Schema pattern; with `maxLength` 40.
pub const APP_NAME_PATTERN: &str = "^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$";

/// Whether `name` can be an app or process name: a lowercase DNS label that starts with a
/// letter, at most 40 characters.
pub fn valid_app_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !name.ends_with('-')
}

/// The rules of a manifest, whatever file it came from; `field` is relative to the manifest
/// (`processes.web.instances`).
pub fn validate_manifest(m: &AppManifest) -> Result<(), FieldError> {
    if !valid_app_name(&m.name) {
        return Err(FieldError::new(
            "name",
            format!(
                "{:?} is not an app name: lowercase letters, digits and '-', starting with a letter, at most 40",
                m.name
            ),
        ));
    }
    if let Some(b) = &m.build {
        text("build", b, 4096)?;
    }
    for (k, v) in &m.env {
        let ok = !k.is_empty()
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
            && !k.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(FieldError::new(format!("env.{k}"), "is not a valid variable name"));
        }
        if k == "PORT" {
            return Err(FieldError::new("env.PORT", "is set by enjin for each instance"));
        }
        text(&format!("env.{k}"), v, 32 * 1024)?;
    }
    if m.processes.is_empty() {
        return Err(FieldError::new("processes", "an app needs at least one process type"));
    }
    for (name, p) in &m.processes {
        let f = |s: &str| format!("processes.{name}{s}");
        if !valid_app_name(name) {
            return Err(FieldError::new(
                f(""),
                "process names are lowercase letters, digits and '-', starting with a letter",
            ));
        }
        if p.command.trim().is_empty() {
            return Err(FieldError::new(f(".command"), "is empty"));
        }
        text(&f(".command"), &p.command, 4096)?;
        if p.instances > MAX_INSTANCES {
            return Err(FieldError::new(f(".instances"), format!("must be at most {MAX_INSTANCES}")));
        }
        let r = &p.resources;
        if r.cpu_millis == Some(0) || r.memory_bytes == Some(0) || r.pids == Some(0) {
            return Err(FieldError::new(f(".resources"), "a limit of 0 would stop the process from running"));
        }
        if r.disk_bytes.is_some_and(|d| d < super::node::MIN_DISK_BYTES) {
            return Err(FieldError::new(f(".disk"), "must be at least 4 MiB, the smallest writable layer"));
        }
        if let Some(h) = &p.health {
            if let Some(path) = &h.path {
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.chars().any(|c| c.is_control() || c == ' ')
                {
                    return Err(FieldError::new(f(".health.path"), "must start with '/' and have no spaces"));
                }
                if h.kind != HealthKind::Http {
                    return Err(FieldError::new(f(".health.path"), "only http checks have a path"));
                }
            }
            if h.interval_ms < 100
                || h.timeout_ms == 0
                || h.failure_threshold == 0
                || h.start_timeout_seconds == 0
            {
                return Err(FieldError::new(
                    f(".health"),
                    "interval_ms is at least 100; timeouts and thresholds must be positive",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn manifest() -> AppManifest {
        let web = ProcessType {
            command: "python3 app.py".into(),
            instances: 2,
            resources: Resources::default(),
            health: None,
        };
        AppManifest {
            name: "hello".into(),
            processes: [("web".to_string(), web)].into(),
            ..AppManifest::default()
        }
    }

    #[test]
    fn manifests_are_checked_field_by_field() {
        assert_eq!(validate_manifest(&manifest()), Ok(()));
        let mut m = manifest();
        m.name = "Hello".into();
        assert_eq!(validate_manifest(&m).map_err(|e| e.field), Err("name".into()));
        let mut m = manifest();
        if let Some(p) = m.processes.get_mut("web") {
            p.instances = 101;
        }
        assert_eq!(validate_manifest(&m).map_err(|e| e.field), Err("processes.web.instances".into()));
        let mut m = manifest();
        m.env.insert("PORT".into(), "1".into());
        assert_eq!(validate_manifest(&m).map_err(|e| e.field), Err("env.PORT".into()));
        let mut m = manifest();
        m.processes.clear();
        assert_eq!(validate_manifest(&m).map_err(|e| e.field), Err("processes".into()));
    }

    #[test]
    fn digests() {
        assert!(PackageRef::valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!PackageRef::valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!PackageRef::valid_digest("sha256:abc"));
        assert!(!PackageRef::valid_digest(&"a".repeat(71)));
    }

    #[test]
    fn app_names() {
        assert!(valid_app_name("hello-2"));
        assert!(!valid_app_name("2hello"));
        assert!(!valid_app_name("hello-"));
        assert!(!valid_app_name("he_llo"));
        assert!(!valid_app_name(""));
    }
}
