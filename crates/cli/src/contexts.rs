//! Login contexts, like kubectl's: each a server, the CA its certificate comes from (PEM) and a
//! token, kept in `$XDG_CONFIG_HOME/enjin/contexts.toml` (default `~/.config/enjin/`), one of
//! them current. The file holds tokens, so it is written 0600 from creation (temporary file,
//! fsync, rename) in a 0700 directory, and refused when others can read it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config;

pub const CONTEXTS_FILE: &str = "contexts.toml";

/// One server to talk to, and what to talk to it with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginContext {
    pub server: String,
    pub token: String,
    /// The CA certificate (PEM) the server's certificate must chain to; `None` for a plain-HTTP
    /// server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

impl std::fmt::Debug for LoginContext {
    // The token must not end up in logs through a `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginContext")
            .field("server", &self.server)
            .field("token", &"<secret>")
            .field("ca", &self.ca.as_ref().map(|c| format!("<{} bytes>", c.len())))
            .finish()
    }
}

/// Every context, and which one is current.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, LoginContext>,
}

/// `$XDG_CONFIG_HOME/enjin`, else `~/.config/enjin`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("enjin"));
    }
    let home = std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/enjin"))
}

/// A context name: what a shell and a file name can carry without quoting.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if !ok {
        bail!("invalid context name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// A context name from a server URL: its host and port (`127.0.0.1-7480`).
pub fn name_for(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut name = String::new();
    for c in authority.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).chars().take(64).collect::<String>();
    if name.is_empty() { "default".to_string() } else { name }
}

impl Contexts {
    /// The contexts in `dir`; none when the file does not exist.
    pub fn load(dir: &Path) -> Result<Contexts> {
        let path = dir.join(CONTEXTS_FILE);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by other users (mode {mode:o}) and holds tokens; make it private with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let text = fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))
    }

    /// Write the contexts to `dir` (made 0700), atomically and 0600 from creation.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to make {} private", dir.display()))?;
        let text = toml::to_string(self).context("failed to encode the contexts")?;
        config::write_secret(&dir.join(CONTEXTS_FILE), &text)
    }

    /// The context named `name`, or the current one.
    pub fn get(&self, name: Option<&str>) -> Result<Option<(&str, &LoginContext)>> {
        let Some(name) = name.or(self.current.as_deref()) else { return Ok(None) };
        match self.contexts.get_key_value(name) {
            Some((n, c)) => Ok(Some((n.as_str(), c))),
            None => bail!("no context named {name:?}; `enjin context list` shows them"),
        }
    }

    /// The context whose server is `server`, if any (the current one first).
    pub fn for_server(&self, server: &str) -> Option<&LoginContext> {
        let same = |c: &&LoginContext| same_server(&c.server, server);
        self.current
            .as_ref()
            .and_then(|n| self.contexts.get(n))
            .filter(same)
            .or_else(|| self.contexts.values().find(same))
    }

    /// Add or replace a context and make it current.
    pub fn upsert(&mut self, name: &str, context: LoginContext) {
        self.contexts.insert(name.to_string(), context);
        self.current = Some(name.to_string());
    }

    pub fn use_context(&mut self, name: &str) -> Result<()> {
        if !self.contexts.contains_key(name) {
            bail!("no context named {name:?}; `enjin context list` shows them");
        }
        self.current = Some(name.to_string());
        Ok(())
    }

    /// Forget a context; if it was current, none is.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        if self.contexts.remove(name).is_none() {
            bail!("no context named {name:?}; `enjin context list` shows them");
        }
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        Ok(())
    }
}

/// Whether two server URLs name the same server (ignoring a trailing slash and case).
pub fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(server: &str) -> LoginContext {
        LoginContext { server: server.into(), token: "enjin_t".into(), ca: Some("PEM".into()) }
    }

    #[test]
    fn contexts_are_written_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("enjin");
        let mut c = Contexts::default();
        c.upsert("prod", ctx("https://prod:7480"));
        c.upsert("dev", ctx("https://127.0.0.1:7480"));
        c.save(&conf).expect("save");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&conf), 0o700);
        assert_eq!(mode(&conf.join(CONTEXTS_FILE)), 0o600);
        let back = Contexts::load(&conf).expect("load");
        assert_eq!(back, c);
        assert_eq!(back.current.as_deref(), Some("dev"));
        assert!(!format!("{back:?}").contains("enjin_t"), "Debug never shows tokens");
    }

    #[test]
    fn a_contexts_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Contexts::default().save(dir.path()).expect("save");
        let path = dir.path().join(CONTEXTS_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Contexts::load(dir.path()).expect_err("refused");
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
    }

    #[test]
    fn use_remove_and_lookup() {
        let mut c = Contexts::default();
        c.upsert("a", ctx("https://a:1"));
        c.upsert("b", ctx("https://b:1/"));
        assert_eq!(c.get(None).expect("current").map(|(n, _)| n), Some("b"));
        c.use_context("a").expect("use a");
        assert_eq!(c.get(None).expect("current").map(|(n, _)| n), Some("a"));
        assert!(c.use_context("nope").is_err());
        assert!(c.get(Some("nope")).is_err());
        assert_eq!(c.for_server("https://b:1").map(|x| x.server.as_str()), Some("https://b:1/"));
        c.remove("a").expect("remove");
        assert_eq!(c.current, None);
        assert!(c.get(None).expect("none").is_none());
        assert!(c.remove("a").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(name_for("https://127.0.0.1:7480"), "127.0.0.1-7480");
        assert_eq!(name_for("https://[::1]:7480/"), "1-7480");
        assert_eq!(name_for("https://enjin.example"), "enjin.example");
        assert!(check_name("prod-1").is_ok());
        for bad in ["", ".hidden", "a/b", "x y", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
