//! Reading an app's manifest: `enjin.toml`, a Heroku-style `Procfile`, or both.
//!
//! Both files are untrusted text (they come with the app), so parsing never panics and every
//! error says where it is: the file, the line (and the column for syntax errors) and the
//! field. `enjin.toml` is walked as a spanned TOML tree rather than deserialised with serde,
//! so that a rule broken after parsing — one of the model's rules in `validate_manifest`,
//! which names a field like `processes.web.instances` — can still be pointed at the line of
//! the key that set it.
//!
//! `enjin.toml`:
//!
//! ```toml
//! name = "hello"                 # optional: else --name, else the directory's name
//! build = "npm ci && npm run build"
//!
//! [env]
//! GREETING = "hi"
//!
//! [processes.web]
//! command = "node server.js"
//! instances = 2                  # default 1, at most 100
//! memory = "256M"                # bytes, or k/M/G/T (powers of 1024, optional "B"/"iB")
//! disk = "1G"                    # same form as memory
//! cpu = 0.5                      # cores
//! pids = 64
//!
//! [processes.web.health]
//! type = "http"                  # http | tcp | process
//! path = "/healthz"
//! interval_ms = 1000
//! timeout_ms = 1000
//! failure_threshold = 2
//! start_timeout_seconds = 60
//! ```
//!
//! A `Procfile` has `name: command` lines; blank lines and `#` comments are allowed, and each
//! of its processes runs one instance. When both files exist, a process in `enjin.toml` wins
//! over the `Procfile`'s of the same name field by field (so `enjin.toml` may set only
//! `instances` for a process whose command is in the `Procfile`), and a `Procfile` process
//! that `enjin.toml` does not name is added.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use enjin_model::kinds::validate_manifest;
use enjin_model::kinds::{AppManifest, HealthCheck, HealthKind, ProcessType, Resources, valid_app_name};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The manifest file's name.
pub const ENJIN_TOML: &str = "enjin.toml";
/// The Procfile's name.
pub const PROCFILE: &str = "Procfile";
/// The largest manifest file read: a manifest is a few hundred bytes, and the file is
/// untrusted.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// The most CPU cores a process may ask for; only there to keep the arithmetic finite.
const MAX_CPU_CORES: f64 = 4096.0;

/// A manifest that cannot be used, and where the fault is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file at fault (joined to the app directory by [`load`]), or the directory itself
    /// when no file is (no manifest at all, or an app name taken from the directory).
    pub file: PathBuf,
    /// 1-based line of the key or value at fault.
    pub line: Option<usize>,
    /// 1-based column, for syntax errors.
    pub column: Option<usize>,
    /// The field at fault, as a dotted path: `processes.web.instances`.
    pub field: Option<String>,
    /// What is wrong, for the person who wrote the file.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

impl ManifestError {
    fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ManifestError { file: file.into(), line: None, column: None, field: None, message: message.into() }
    }

    fn at(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

/// One process type as a file states it, before defaults and merging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DraftProcess {
    /// The command line, if this file gives one; a process that no file gives one is refused.
    pub command: Option<String>,
    /// The instance count, if this file gives one; 1 when no file does.
    pub instances: Option<u32>,
    /// The limits this file sets (`memory`, `disk`, `cpu`, `pids`); absent ones are unlimited.
    pub resources: Resources,
    /// The health check, if this file sets one; else the model's default for the process's name.
    pub health: Option<HealthCheck>,
}

/// What one file says, parsed but not yet merged or validated. `origins` remembers the line
/// of every key, so that later errors can name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestDraft {
    /// The app's name, if the file sets one (only `enjin.toml` can).
    pub name: Option<String>,
    /// The build command, if the file sets one (only `enjin.toml` can).
    pub build: Option<String>,
    /// The environment variables the file sets (only `enjin.toml` can).
    pub env: BTreeMap<String, String>,
    /// The process types the file defines, by name.
    pub processes: BTreeMap<String, DraftProcess>,
    origins: BTreeMap<String, Origin>,
}

impl ManifestDraft {
    /// The file and 1-based line where `field` (a dotted path) was set, if it was.
    pub fn origin(&self, field: &str) -> Option<(&'static str, usize)> {
        self.origins.get(field).map(|o| (o.file, o.line))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    file: &'static str,
    line: usize,
}

/// The inputs of a manifest, already read: [`load`] reads them from a directory, tests and
/// fuzzing pass them in.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// Joined in front of the file names in errors (an empty path leaves them bare).
    pub dir: &'a Path,
    /// The directory's own name, the app name of last resort.
    pub dir_name: Option<&'a str>,
    /// The text of `enjin.toml`, if the app has one.
    pub enjin_toml: Option<&'a str>,
    /// The text of the `Procfile`, if the app has one.
    pub procfile: Option<&'a str>,
    /// The name given on the command line; it beats every other.
    pub name_override: Option<&'a str>,
}

/// Read the manifest of the app in `dir` from `enjin.toml` and/or `Procfile`.
pub fn load(dir: &Path, name_override: Option<&str>) -> Result<AppManifest, ManifestError> {
    let enjin_toml = read_optional(dir, ENJIN_TOML)?;
    let procfile = read_optional(dir, PROCFILE)?;
    // `.` and `..` have no file name of their own; the canonical path does.
    let canonical = dir.canonicalize().ok();
    let dir_name = canonical.as_deref().unwrap_or(dir).file_name().and_then(|n| n.to_str());
    from_sources(&Sources {
        dir,
        dir_name,
        enjin_toml: enjin_toml.as_deref(),
        procfile: procfile.as_deref(),
        name_override,
    })
}

fn read_optional(dir: &Path, name: &str) -> Result<Option<String>, ManifestError> {
    let path = dir.join(name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ManifestError::new(&path, format!("cannot open: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ManifestError::new(&path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::new(&path, format!("is larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        let line = line_of(&String::from_utf8_lossy(e.as_bytes()), e.utf8_error().valid_up_to());
        ManifestError::new(&path, "is not UTF-8 text").at(line)
    })
}

/// Merge and validate already-read manifest files; pure.
pub fn from_sources(s: &Sources<'_>) -> Result<AppManifest, ManifestError> {
    let in_dir = |mut e: ManifestError| {
        e.file = s.dir.join(&e.file);
        e
    };
    let dir_file = || if s.dir.as_os_str().is_empty() { PathBuf::from(".") } else { s.dir.to_path_buf() };
    let dir_error = |message: String| ManifestError::new(dir_file(), message).field("name");
    let toml = s.enjin_toml.map(parse_enjin_toml).transpose().map_err(in_dir)?;
    let procfile = s.procfile.map(parse_procfile).transpose().map_err(in_dir)?;
    let primary = if toml.is_some() { ENJIN_TOML } else { PROCFILE };
    let (mut draft, origins) = match (toml, procfile) {
        (None, None) => {
            return Err(ManifestError::new(dir_file(), format!("has no {ENJIN_TOML} or {PROCFILE}")));
        }
        (Some(mut only), None) | (None, Some(mut only)) => {
            let origins = std::mem::take(&mut only.origins);
            (only, origins)
        }
        (Some(t), Some(p)) => merge(t, p),
    };

    let name = if let Some(name) = s.name_override {
        if !valid_app_name(name) {
            return Err(dir_error(format!("{name:?} (from --name) is not an app name: {APP_NAME_RULE}")));
        }
        name.to_string()
    } else if let Some(name) = draft.name.take() {
        name
    } else {
        match s.dir_name.map(str::to_lowercase) {
            Some(name) if valid_app_name(&name) => name,
            Some(name) => {
                return Err(dir_error(format!(
                    "the app would be named after its directory, {name:?}, which is not an app name \
                     ({APP_NAME_RULE}); pass --name or set name in {ENJIN_TOML}"
                )));
            }
            None => {
                return Err(dir_error(format!(
                    "the directory has no name to name the app after; pass --name or set name in {ENJIN_TOML}"
                )));
            }
        }
    };

    let mut processes = BTreeMap::new();
    for (pname, p) in draft.processes {
        // A process that no file gives a command is reported as missing one, which is
        // clearer than the model's "is empty".
        let Some(command) = p.command else {
            let field = format!("processes.{pname}.command");
            return Err(locate(s.dir, &origins, primary, &field, "is required"));
        };
        let process = ProcessType {
            command,
            instances: p.instances.unwrap_or(1),
            resources: p.resources,
            health: p.health,
        };
        processes.insert(pname, process);
    }
    let manifest = AppManifest { name, build: draft.build, env: draft.env, processes };
    validate_manifest(&manifest).map_err(|e| locate(s.dir, &origins, primary, &e.field, &e.message))?;
    Ok(manifest)
}

const APP_NAME_RULE: &str = "lowercase letters, digits and '-', starting with a letter, at most 40";

/// An error at `field`, placed at the line of the nearest key that set it or its parent.
fn locate(
    dir: &Path,
    origins: &BTreeMap<String, Origin>,
    primary: &'static str,
    field: &str,
    message: &str,
) -> ManifestError {
    let mut probe = field;
    let origin = loop {
        if let Some(o) = origins.get(probe) {
            break Some(*o);
        }
        match probe.rfind('.') {
            Some(i) => probe = &probe[..i],
            None => break None,
        }
    };
    let (file, line) = match origin {
        Some(o) => (o.file, Some(o.line)),
        None => (primary, None),
    };
    ManifestError {
        file: dir.join(file),
        line,
        column: None,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// `enjin.toml` over the `Procfile`: field by field for a process both name.
fn merge(toml: ManifestDraft, procfile: ManifestDraft) -> (ManifestDraft, BTreeMap<String, Origin>) {
    let mut origins = procfile.origins;
    let mut processes = procfile.processes;
    for (name, p) in toml.processes {
        let merged = match processes.remove(&name) {
            Some(from_procfile) => DraftProcess { command: p.command.or(from_procfile.command), ..p },
            None => p,
        };
        processes.insert(name, merged);
    }
    origins.extend(toml.origins);
    let draft = ManifestDraft {
        name: toml.name,
        build: toml.build,
        env: toml.env,
        processes,
        origins: BTreeMap::new(),
    };
    (draft, origins)
}

/// Parse a `Procfile`: `name: command` lines, blank lines and `#` comments.
pub fn parse_procfile(text: &str) -> Result<ManifestDraft, ManifestError> {
    let mut draft = ManifestDraft::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, command)) = trimmed.split_once(':') else {
            return Err(ManifestError::new(PROCFILE, "expected `name: command`").at(line));
        };
        let (name, command) = (name.trim(), command.trim());
        let field = format!("processes.{name}");
        if name.is_empty() {
            return Err(ManifestError::new(PROCFILE, "a process needs a name before the ':'").at(line));
        }
        if let Some(first) = draft.origins.get(&field) {
            let message = format!("is defined twice (first on line {})", first.line);
            return Err(ManifestError::new(PROCFILE, message).at(line).field(field));
        }
        let origin = Origin { file: PROCFILE, line };
        draft.origins.insert(format!("{field}.command"), origin);
        draft.origins.insert(field, origin);
        let process =
            DraftProcess { command: Some(command.to_string()), instances: Some(1), ..Default::default() };
        draft.processes.insert(name.to_string(), process);
    }
    Ok(draft)
}

/// Parse `enjin.toml`. Only the file's own rules are checked here (syntax, known keys,
/// types, units); the model's rules are checked once the files are merged.
pub fn parse_enjin_toml(text: &str) -> Result<ManifestDraft, ManifestError> {
    let doc = DeTable::parse(text).map_err(|e| {
        let mut err = ManifestError::new(ENJIN_TOML, e.message().trim().to_string());
        if let Some(span) = e.span() {
            let (line, column) = line_column(text, span.start);
            err.line = Some(line);
            err.column = Some(column);
        }
        err
    })?;
    let newlines = text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i).collect();
    let mut walker = Walker { newlines, origins: BTreeMap::new() };
    let mut draft = ManifestDraft::default();
    for (key, value) in doc.get_ref() {
        let k = key.get_ref().as_ref();
        walker.record(k, key);
        match k {
            "name" => draft.name = Some(walker.string(k, value)?),
            "build" => draft.build = Some(walker.string(k, value)?),
            "env" => {
                for (ekey, evalue) in walker.table(k, value)? {
                    let field = format!("env.{}", ekey.get_ref());
                    walker.record(&field, ekey);
                    draft.env.insert(ekey.get_ref().to_string(), walker.string(&field, evalue)?);
                }
            }
            "processes" => {
                for (pkey, pvalue) in walker.table(k, value)? {
                    let field = format!("processes.{}", pkey.get_ref());
                    walker.record(&field, pkey);
                    let process = walker.process(&field, pvalue)?;
                    draft.processes.insert(pkey.get_ref().to_string(), process);
                }
            }
            _ => return Err(walker.unknown(k, key, "name, build, env or processes")),
        }
    }
    draft.origins = walker.origins;
    Ok(draft)
}

type Key<'i> = Spanned<toml::de::DeString<'i>>;
type Value<'i> = Spanned<DeValue<'i>>;

struct Walker {
    /// Byte offsets of the text's newlines, to find a key's line without rescanning.
    newlines: Vec<usize>,
    origins: BTreeMap<String, Origin>,
}

impl Walker {
    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }

    fn record(&mut self, field: &str, key: &Key<'_>) {
        let line = self.line(key.span().start);
        self.origins.insert(field.to_string(), Origin { file: ENJIN_TOML, line });
    }

    fn error(&self, field: &str, at: usize, message: impl Into<String>) -> ManifestError {
        ManifestError::new(ENJIN_TOML, message).at(self.line(at)).field(field)
    }

    fn unknown(&self, field: &str, key: &Key<'_>, expected: &str) -> ManifestError {
        self.error(field, key.span().start, format!("unknown key (expected {expected})"))
    }

    fn wrong_type(&self, field: &str, value: &Value<'_>, expected: &str) -> ManifestError {
        let found = value.get_ref().type_str();
        let article = if found.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        self.error(field, value.span().start, format!("must be {expected}, not {article} {found}"))
    }

    fn string(&self, field: &str, value: &Value<'_>) -> Result<String, ManifestError> {
        match value.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.wrong_type(field, value, "a string")),
        }
    }

    fn table<'v, 'i>(&self, field: &str, value: &'v Value<'i>) -> Result<&'v DeTable<'i>, ManifestError> {
        match value.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.wrong_type(field, value, "a table")),
        }
    }

    fn integer(&self, field: &str, value: &Value<'_>) -> Result<i128, ManifestError> {
        match value.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.error(field, value.span().start, "is not a valid integer")),
            _ => Err(self.wrong_type(field, value, "an integer")),
        }
    }

    /// A non-negative integer that fits `T` (and is positive if `positive`).
    fn count<T: TryFrom<i128>>(
        &self,
        field: &str,
        value: &Value<'_>,
        positive: bool,
    ) -> Result<T, ManifestError> {
        let n = self.integer(field, value)?;
        let low = i128::from(positive);
        T::try_from(n).ok().filter(|_| n >= low).ok_or_else(|| {
            let what = if positive { "a positive integer" } else { "a non-negative integer" };
            self.error(field, value.span().start, format!("must be {what} in range, not {n}"))
        })
    }

    fn size(&self, field: &str, value: &Value<'_>) -> Result<u64, ManifestError> {
        let at = value.span().start;
        let bytes = match value.get_ref() {
            DeValue::Integer(_) => self.count::<u64>(field, value, false)?,
            DeValue::String(s) => parse_size(s).map_err(|m| self.error(field, at, m))?,
            _ => return Err(self.wrong_type(field, value, "a size such as \"256M\" or a number of bytes")),
        };
        if bytes == 0 {
            return Err(self.error(field, at, "must be more than 0 bytes"));
        }
        Ok(bytes)
    }

    fn cpu_millis(&self, field: &str, value: &Value<'_>) -> Result<u64, ManifestError> {
        let at = value.span().start;
        let cores = match value.get_ref() {
            DeValue::Integer(_) => self.integer(field, value)? as f64,
            DeValue::Float(f) => {
                f.as_str().parse::<f64>().map_err(|_| self.error(field, at, "is not a valid number"))?
            }
            _ => return Err(self.wrong_type(field, value, "a number of cores such as 0.5")),
        };
        if !cores.is_finite() || !(0.0..=MAX_CPU_CORES).contains(&cores) {
            return Err(self.error(
                field,
                at,
                format!("must be a number of cores from 0.001 to {MAX_CPU_CORES}"),
            ));
        }
        // In range (checked above), so the cast neither truncates nor wraps.
        let millis = (cores * 1000.0).round() as u64;
        if millis == 0 {
            return Err(self.error(field, at, "must be at least 0.001 cores"));
        }
        Ok(millis)
    }

    fn process(&mut self, field: &str, value: &Value<'_>) -> Result<DraftProcess, ManifestError> {
        let mut p = DraftProcess::default();
        for (key, v) in self.table(field, value)? {
            let k = key.get_ref().as_ref();
            let f = format!("{field}.{k}");
            self.record(&f, key);
            match k {
                "command" => p.command = Some(self.string(&f, v)?),
                "instances" => p.instances = Some(self.count(&f, v, false)?),
                "memory" => p.resources.memory_bytes = Some(self.size(&f, v)?),
                "disk" => p.resources.disk_bytes = Some(self.size(&f, v)?),
                "cpu" => p.resources.cpu_millis = Some(self.cpu_millis(&f, v)?),
                "pids" => p.resources.pids = Some(self.count(&f, v, true)?),
                "health" => p.health = Some(self.health(&f, v)?),
                _ => {
                    return Err(self.unknown(
                        &f,
                        key,
                        "command, instances, memory, disk, cpu, pids or health",
                    ));
                }
            }
        }
        Ok(p)
    }

    fn health(&mut self, field: &str, value: &Value<'_>) -> Result<HealthCheck, ManifestError> {
        let mut h = HealthCheck::default();
        let mut kind = None;
        for (key, v) in self.table(field, value)? {
            let k = key.get_ref().as_ref();
            let f = format!("{field}.{k}");
            self.record(&f, key);
            match k {
                "type" => {
                    kind = Some(match self.string(&f, v)?.as_str() {
                        "http" => HealthKind::Http,
                        "tcp" => HealthKind::Tcp,
                        "process" => HealthKind::Process,
                        other => {
                            let message = format!("{other:?} is not a check type (http, tcp or process)");
                            return Err(self.error(&f, v.span().start, message));
                        }
                    })
                }
                "path" => h.path = Some(self.string(&f, v)?),
                "interval_ms" => h.interval_ms = self.count(&f, v, false)?,
                "timeout_ms" => h.timeout_ms = self.count(&f, v, false)?,
                "failure_threshold" => h.failure_threshold = self.count(&f, v, false)?,
                "start_timeout_seconds" => h.start_timeout_seconds = self.count(&f, v, false)?,
                _ => {
                    return Err(self.unknown(
                        &f,
                        key,
                        "type, path, interval_ms, timeout_ms, failure_threshold or start_timeout_seconds",
                    ));
                }
            }
        }
        h.kind = kind.ok_or_else(|| {
            self.error(&format!("{field}.type"), value.span().start, "is required (http, tcp or process)")
        })?;
        Ok(h)
    }
}

/// Parse a size: a number of bytes, optionally followed by `k`, `M`, `G` or `T` (any case,
/// powers of 1024) and an optional `B` or `iB`: `512k`, `256M`, `1GiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(digits_end);
    let bad = || format!("{text:?} is not a size: a number of bytes, optionally with k, M, G or T");
    if digits.is_empty() {
        return Err(bad());
    }
    let unit = unit.trim_start();
    let unit = unit.strip_suffix("iB").or_else(|| unit.strip_suffix('B')).unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(bad()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    line_column(text, offset).0
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_only(text: &str) -> Result<AppManifest, ManifestError> {
        from_sources(&Sources {
            dir: Path::new(""),
            dir_name: Some("dir"),
            enjin_toml: Some(text),
            procfile: None,
            name_override: None,
        })
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn lines_and_columns() {
        assert_eq!(line_column("a\nbc\nd", 0), (1, 1));
        assert_eq!(line_column("a\nbc\nd", 3), (2, 2));
        assert_eq!(line_column("a\nbc\nd", 5), (3, 1));
        assert_eq!(line_column("é\né", 100), (2, 2));
    }

    #[test]
    fn large_manifests_are_read_in_linear_time() {
        let mut text = String::from("[processes.web]\ncommand = \"x\"\n[env]\n");
        for i in 0..20_000 {
            text.push_str(&format!("V{i} = \"{i}\"\n"));
        }
        text.push_str("bad-key = 1\n");
        let e = toml_only(&text).expect_err("an invalid variable name at the end");
        assert_eq!((e.line, e.field.as_deref()), (Some(20_004), Some("env.bad-key")));
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = toml_only(
            r#"
name = "hello"
build = "make"
[env]
GREETING = "hi"
[processes.web]
command = "./serve"
instances = 3
memory = "256M"
cpu = 0.5
pids = 32
[processes.web.health]
type = "http"
path = "/healthz"
interval_ms = 500
[processes.worker]
command = "./work"
cpu = 2
memory = 1048576
"#,
        )
        .expect("valid manifest");
        assert_eq!(m.name, "hello");
        assert_eq!(m.build.as_deref(), Some("make"));
        assert_eq!(m.env.get("GREETING").map(String::as_str), Some("hi"));
        let web = &m.processes["web"];
        assert_eq!(web.instances, 3);
        assert_eq!(web.resources.memory_bytes, Some(256 << 20));
        assert_eq!(web.resources.cpu_millis, Some(500));
        assert_eq!(web.resources.pids, Some(32));
        let health = web.health.as_ref().expect("health");
        assert_eq!(health.kind, HealthKind::Http);
        assert_eq!(health.path.as_deref(), Some("/healthz"));
        assert_eq!(health.interval_ms, 500);
        assert_eq!(health.timeout_ms, HealthCheck::default().timeout_ms);
        let worker = &m.processes["worker"];
        assert_eq!(worker.instances, 1);
        assert_eq!(worker.resources.cpu_millis, Some(2000));
        assert_eq!(worker.resources.memory_bytes, Some(1 << 20));
    }

    #[test]
    fn type_errors_name_the_value() {
        let e = toml_only("[processes.web]\ncommand = 3\n").expect_err("command is an integer");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("processes.web.command")));
        assert_eq!(e.message, "must be a string, not an integer");
        let e = toml_only("[processes.web]\ncommand = \"x\"\ninstances = -1\n").expect_err("negative");
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("processes.web.instances")));
        let e = toml_only("[processes.web]\ncommand = \"x\"\ncpu = 0.0001\n").expect_err("tiny cpu");
        assert_eq!(e.field.as_deref(), Some("processes.web.cpu"));
        let e = toml_only("[processes.web]\ncommand = \"x\"\n[processes.web.health]\npath = \"/\"\n")
            .expect_err("no type");
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("processes.web.health.type")));
    }

    #[test]
    fn a_process_without_a_command_is_reported_missing() {
        let e = toml_only("[processes.web]\ninstances = 2\n").expect_err("no command");
        assert_eq!(e.to_string(), "enjin.toml:1: processes.web.command: is required");
    }

    #[test]
    fn model_rules_point_at_their_key() {
        let e = toml_only(
            "[processes.web]\ncommand = \"x\"\n[processes.web.health]\ntype = \"tcp\"\npath = \"/\"\n",
        )
        .expect_err("tcp check with a path");
        assert_eq!(e.to_string(), "enjin.toml:5: processes.web.health.path: only http checks have a path");
        let e = toml_only("[env]\nPORT = \"1\"\n[processes.web]\ncommand = \"x\"\n").expect_err("PORT");
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("env.PORT")));
        let e = toml_only("name = \"x\"\n").expect_err("no processes");
        assert_eq!(e.to_string(), "enjin.toml: processes: an app needs at least one process type");
    }
}
