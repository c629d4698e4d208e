//! The platform's commands: `enjin deploy`, `apps`, `app status`, `scale`, `restart`,
//! `rollback`, `releases`, `logs`.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use enjin_client::Client;
use enjin_model::api::{AppStatus, DeployRequest, EventType, LogsQuery, RolloutStarted};
use enjin_model::kinds::{Strategy, TaskSpec, TaskState};
use enjin_model::{Kind, Object};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use super::client;
use crate::args::{DeployArgs, Global, LogsArgs, Output};
use crate::output;

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Finish a step; where there is no terminal to draw bars on, say it in a line instead. Progress
/// goes to stderr, as the bars do: stdout holds only the result (JSON with `-o json`).
fn finish(bar: &ProgressBar, message: String) {
    if bar.is_hidden() {
        eprintln!("{:>9}: {message}", bar.prefix());
    }
    bar.finish_with_message(message);
}

fn step(name: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(style("{spinner} {prefix:>9} {msg}"));
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The environment the manifest's `build` runs in: the caller's, without every variable whose
/// name starts with `ENJIN_` (`ENJIN_TOKEN`, `ENJIN_SERVER`, `ENJIN_DATA_DIR`, …). The build is
/// the app's own code, run on this machine as this user; it gets none of enjin's credentials
/// or hints where to find them.
fn build_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    vars.into_iter().filter(|(k, _)| !k.as_bytes().starts_with(b"ENJIN_")).collect()
}

/// The manifest's `build`, run with `/bin/sh -c` in `dir` with exactly `env`.
fn build_command(dir: &Path, build: &str, env: Vec<(OsString, OsString)>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(build).current_dir(dir).env_clear().envs(env).stdin(std::process::Stdio::null());
    cmd
}

/// `enjin deploy DIR`: read the manifest, build, pack, upload, roll out, wait for health.
pub async fn deploy(g: &Global, args: &DeployArgs) -> Result<()> {
    let dir = args.dir.clone();
    let manifest = enjin_app::manifest::load(&dir, args.name.as_deref())
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot deploy {}", dir.display()))?;
    let name = manifest.name.clone();
    let c = client(g)?;
    if let Some(build) = &manifest.build {
        let bar = step("build");
        bar.set_message(build.clone());
        let out = build_command(&dir, build, build_env(std::env::vars_os()))
            .output()
            .await
            .with_context(|| format!("failed to run the build command in {}", dir.display()))?;
        if !out.status.success() {
            bar.abandon_with_message(format!("failed: {build}"));
            bail!(
                "the build command `{build}` failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        finish(&bar, format!("{build}: done"));
    }
    let bar = step("pack");
    let d = dir.clone();
    let packed = tokio::task::spawn_blocking(move || enjin_app::package::pack(&d))
        .await
        .context("packing panicked")?
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot pack {}", dir.display()))?;
    finish(
        &bar,
        format!(
            "{} files, {} → {} ({})",
            packed.files,
            human_bytes(packed.unpacked_bytes),
            human_bytes(packed.bytes.len() as u64),
            &packed.digest[..19]
        ),
    );
    let size = packed.bytes.len() as u64;
    let up = ProgressBar::new(size).with_style(style("  {prefix:>9} [{bar:30}] {bytes}/{total_bytes} {msg}"));
    up.set_prefix("upload");
    let progress_bar = up.clone();
    let account = match &args.account {
        Some(a) => Some(super::objects::resolve(&c, enjin_model::Kind::Account, a).await?),
        None => None,
    };
    let uploaded = c
        .upload_package(packed.bytes, account, Arc::new(move |n| progress_bar.set_position(n)))
        .await
        .context("failed to upload the package")?;
    let how = if uploaded.existed { "already stored" } else { "stored" };
    finish(&up, format!("{} {how}", human_bytes(size)));
    let req = DeployRequest { manifest, package: uploaded.package, account };
    let started = c.deploy(&name, &req).await.with_context(|| format!("failed to deploy {name}"))?;
    if args.no_wait {
        return print_started(g, &started);
    }
    follow_task(g, &c, &started, &format!("v{}", started.version)).await?;
    let status = c.app(&name).await?;
    if g.output != Output::Json {
        println!("{name} v{} is live at {}", started.version, status.url);
    }
    if let Some(line) = isolation(&status).filter(|_| !isolated(&status)) {
        eprintln!("warning: {name} isolation: {line}");
    }
    Ok(())
}

fn print_started(g: &Global, started: &RolloutStarted) -> Result<()> {
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(started)?),
        Output::Table => println!(
            "task {} started (v{}); follow it with `enjin task get {}`",
            started.task, started.version, started.task
        ),
    }
    Ok(())
}

/// Show a rollout's progress until it ends; an error if it failed.
/// Follow the rollout's task until it ends: read it once, then take each change from the
/// store's watch (the SSE stream), starting at the revision read — no polling. Should the watch
/// end or fail, the task is read again and the watch restarted from there.
async fn follow_task(g: &Global, c: &Client, started: &RolloutStarted, what: &str) -> Result<()> {
    let bar = ProgressBar::new(0).with_style(style("  {prefix:>9} [{bar:30}] {pos}/{len} {msg}"));
    bar.set_prefix("rollout");
    let mut said = String::new();
    loop {
        let task = c
            .get::<TaskSpec>(started.task)
            .await
            .with_context(|| format!("cannot follow task {}", started.task))?;
        let mut watch = c.watch(Some(Kind::Task), Some(task.meta.revision));
        let mut current = task;
        loop {
            if let Some(done) = show_task(g, &bar, &mut said, &current, what)? {
                return done;
            }
            let Some(Ok(batch)) = watch.next().await else { break };
            let id = started.task.to_string();
            for e in batch.events.into_iter().filter(|e| e.object["uuid"].as_str() == Some(id.as_str())) {
                if e.event_type == EventType::Deleted {
                    bail!("{what}: its task {id} was deleted before it ended");
                }
                if let Ok(t) = serde_json::from_value::<Object<TaskSpec>>(e.object) {
                    current = t;
                }
            }
        }
    }
}

/// Show where `task` is; `Some` with the outcome once it has ended.
fn show_task(
    g: &Global,
    bar: &ProgressBar,
    said: &mut String,
    task: &Object<TaskSpec>,
    what: &str,
) -> Result<Option<Result<()>>> {
    let p = &task.spec.progress;
    bar.set_length(p.total);
    bar.set_position(p.done);
    bar.set_message(p.message.clone());
    if bar.is_hidden() && p.message != *said && !task.spec.state.is_final() {
        eprintln!("{:>9}: {}", "rollout", p.message);
        said.clone_from(&p.message);
    }
    match task.spec.state {
        TaskState::Succeeded => {
            finish(bar, p.message.clone());
            if g.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(task)?);
            }
            Ok(Some(Ok(())))
        }
        TaskState::Failed | TaskState::Cancelled => {
            bar.abandon_with_message("failed".to_string());
            let why = task.spec.error.clone().unwrap_or(p.message.clone());
            Ok(Some(Err(anyhow!("{what}: {why}"))))
        }
        _ => Ok(None),
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

pub async fn list(g: &Global) -> Result<()> {
    let apps = client(g)?.apps().await?;
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = apps
        .items
        .iter()
        .map(|a| {
            let healthy = a.instances.iter().filter(|i| i.routed).count();
            vec![
                a.name.clone(),
                a.version.map_or("-".into(), |v| format!("v{v}")),
                format!("{healthy}/{}", a.instances.len()),
                a.url.clone(),
            ]
        })
        .collect();
    output::table(&["APP", "RELEASE", "ROUTED", "URL"], &rows);
    Ok(())
}

pub async fn status(g: &Global, app: &str) -> Result<()> {
    let s = client(g)?.app(app).await?;
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print_status(&s);
    Ok(())
}

/// Whether every instance of the app runs in the sandbox.
fn isolated(s: &AppStatus) -> bool {
    s.instances.iter().all(|i| i.strategy == Some(Strategy::UnixUser))
}

/// How the app's instances are isolated, in words; `None` when it has none.
fn isolation(s: &AppStatus) -> Option<String> {
    if s.instances.is_empty() {
        return None;
    }
    let plain = s.instances.iter().filter(|i| i.strategy != Some(Strategy::UnixUser)).count();
    Some(if plain == 0 {
        "unix-user — each instance its own uid, cgroup and namespaces".to_string()
    } else if plain == s.instances.len() {
        "none — instances run as plain processes of the operator's user (no root)".to_string()
    } else {
        format!(
            "partial — {plain} of {} instances run as plain processes of the operator's user (no root)",
            s.instances.len()
        )
    })
}

fn print_status(s: &AppStatus) {
    println!("app:       {}", s.name);
    println!("release:   {}", s.version.map_or("none live".into(), |v| format!("v{v}")));
    println!("url:       {}", s.url);
    if let Some(line) = isolation(s) {
        println!("isolation: {line}");
    }
    if let Some(t) = &s.traffic {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        println!(
            "traffic:   {} requests ({} 5xx), {} in flight, p50 {}, p99 {}, {} retries",
            t.requests,
            t.responses_5xx,
            t.in_flight,
            ms(t.p50_ms),
            ms(t.p99_ms),
            t.retries
        );
    }
    let rows: Vec<Vec<String>> = s
        .instances
        .iter()
        .map(|i| {
            vec![
                i.label.clone(),
                i.process.clone(),
                format!("v{}", i.version),
                i.host.clone(),
                i.address.map_or("-".into(), |a| a.to_string()),
                i.state.clone(),
                if i.routed { "yes".into() } else { "no".into() },
                i.cpu_seconds.map_or("-".into(), |c| format!("{c:.2}s")),
                i.memory_bytes.map_or("-".into(), human_bytes),
            ]
        })
        .collect();
    output::table(
        &["INSTANCE", "PROCESS", "RELEASE", "HOST", "ADDRESS", "STATE", "ROUTED", "CPU", "MEMORY"],
        &rows,
    );
}

/// `enjin scale APP web=3 worker=1`.
pub async fn scale(g: &Global, app: &str, counts: &[String]) -> Result<()> {
    let mut processes = BTreeMap::new();
    for c in counts {
        let (p, n) = c.split_once('=').ok_or_else(|| anyhow!("{c:?} should look like web=3"))?;
        let n: u32 = n.parse().with_context(|| format!("{c:?}: {n:?} is not a number of instances"))?;
        processes.insert(p.to_string(), n);
    }
    if processes.is_empty() {
        bail!("say how many instances of which process, e.g. `enjin scale {app} web=3`");
    }
    let c = client(g)?;
    let started = c.scale(app, processes).await.with_context(|| format!("failed to scale {app}"))?;
    follow_task(g, &c, &started, &format!("scale {app}")).await
}

pub async fn restart(g: &Global, app: &str) -> Result<()> {
    let c = client(g)?;
    let started = c.restart(app).await.with_context(|| format!("failed to restart {app}"))?;
    follow_task(g, &c, &started, &format!("restart {app}")).await?;
    if g.output != Output::Json {
        println!("{app}: every instance replaced");
    }
    Ok(())
}

pub async fn rollback(g: &Global, app: &str, version: Option<&str>) -> Result<()> {
    let version = version
        .map(|v| {
            v.trim_start_matches('v')
                .parse::<u32>()
                .with_context(|| format!("{v:?} is not a release like v2"))
        })
        .transpose()?;
    let c = client(g)?;
    let started = c.rollback(app, version).await.with_context(|| format!("failed to roll {app} back"))?;
    follow_task(g, &c, &started, &format!("rollback of {app}")).await?;
    if g.output != Output::Json {
        println!("{app} v{} is live", started.version);
    }
    Ok(())
}

pub async fn releases(g: &Global, app: &str) -> Result<()> {
    let list = client(g)?.releases(app).await?;
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .items
        .iter()
        .map(|r| {
            let state = serde_json::to_value(r.spec.state).ok().and_then(|v| v.as_str().map(str::to_string));
            let counts: Vec<String> =
                r.spec.manifest.processes.iter().map(|(n, p)| format!("{n}={}", p.instances)).collect();
            vec![
                format!("v{}", r.spec.version),
                state.unwrap_or_default(),
                r.spec.description.clone(),
                counts.join(" "),
                r.spec.package.digest.chars().take(19).collect(),
                r.meta.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    output::table(&["RELEASE", "STATE", "HOW", "PROCESSES", "PACKAGE", "CREATED"], &rows);
    Ok(())
}

/// When `--since` says: `10m`, `2h`, `30s`, `1d` ago, or an RFC 3339 time.
pub(super) fn since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 =
        n.parse().map_err(|_| anyhow!("--since {text:?}: give a duration like 10m or an RFC 3339 time"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => bail!("--since {text:?}: the unit is s, m, h or d"),
    };
    Ok(now - chrono::TimeDelta::seconds(secs))
}

/// `enjin logs APP [-f] [--since 10m] [--instance web-v1-…-1]`.
pub async fn logs(g: &Global, args: &LogsArgs) -> Result<()> {
    let c = client(g)?;
    let mut q = LogsQuery {
        since: args.since.as_deref().map(|s| since(s, Utc::now())).transpose()?,
        instance: args.instance.clone(),
        limit: Some(args.tail),
    };
    let started = Utc::now();
    let mut seen: HashSet<(Uuid, u64)> = HashSet::new();
    let labels: BTreeMap<Uuid, String> =
        c.app(&args.app).await?.instances.into_iter().map(|i| (i.uuid, i.label)).collect();
    loop {
        let reply =
            c.logs(&args.app, &q).await.with_context(|| format!("cannot read the logs of {}", args.app))?;
        for line in &reply.lines {
            if !seen.insert((line.instance, line.seq)) {
                continue;
            }
            match g.output {
                Output::Json => println!("{}", serde_json::to_string(line)?),
                Output::Table => {
                    let who =
                        labels.get(&line.instance).cloned().unwrap_or_else(|| line.instance.to_string());
                    let mark = if line.stream == "stderr" { "!" } else { " " };
                    println!("{} {who}{mark} {}", line.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"), line.line);
                }
            }
        }
        if !args.follow {
            return Ok(());
        }
        // From here on only what is new: after the newest line seen, or from when it started.
        let newest = reply.lines.iter().map(|l| l.at).max();
        q.since = Some(newest.or(q.since).unwrap_or(started));
        q.limit = None;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(since("10m", now).unwrap(), now - chrono::TimeDelta::minutes(10));
        assert_eq!(since("2h", now).unwrap(), now - chrono::TimeDelta::hours(2));
        assert_eq!(since("2026-01-01T11:00:00Z", now).unwrap(), now - chrono::TimeDelta::hours(1));
        assert!(since("ten", now).is_err());
        assert!(since("5y", now).is_err());
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn the_build_gets_no_enjin_variables() {
        let env = vars(&[
            ("PATH", "/usr/bin:/bin"),
            ("ENJIN_TOKEN", "enjin_secret"),
            ("ENJIN_SERVER", "http://127.0.0.1:7480"),
            ("ENJIN_DATA_DIR", "/var/lib/enjin"),
            ("ENJIN_LOG", "debug"),
            ("HOME", "/home/me"),
            ("MY_ENJIN_NOTE", "kept: not enjin's"),
            ("enjin_token", "kept: names are case-sensitive"),
        ]);
        let kept: Vec<String> =
            build_env(env).into_iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        assert_eq!(kept, ["PATH", "HOME", "MY_ENJIN_NOTE", "enjin_token"]);
    }

    /// The build really runs with that environment: it writes `env` to a file.
    #[tokio::test]
    async fn a_build_that_prints_its_environment_sees_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let env = vars(&[("PATH", "/usr/bin:/bin"), ("ENJIN_TOKEN", "enjin_secret"), ("APP_MODE", "x")]);
        let out = build_command(dir.path(), "env > seen", build_env(env)).output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        assert!(seen.contains("APP_MODE=x"), "{seen}");
        assert!(!seen.contains("ENJIN_") && !seen.contains("enjin_secret"), "{seen}");
    }

    fn status_with(strategies: &[Option<Strategy>]) -> AppStatus {
        let instances = strategies
            .iter()
            .enumerate()
            .map(|(n, s)| enjin_model::api::InstanceStatus {
                uuid: Uuid::from_u128(n as u128),
                label: format!("web-{n}"),
                process: "web".into(),
                version: 1,
                host: "host-1".into(),
                strategy: *s,
                address: None,
                state: "healthy".into(),
                routed: true,
                message: String::new(),
                cpu_seconds: None,
                memory_bytes: None,
            })
            .collect();
        AppStatus {
            name: "hello".into(),
            uuid: Uuid::nil(),
            account: Uuid::nil(),
            url: "http://hello.localhost".into(),
            version: Some(1),
            instances,
            traffic: None,
        }
    }

    #[test]
    fn status_says_plainly_when_instances_are_not_isolated() {
        let none = status_with(&[Some(Strategy::Process), Some(Strategy::Process)]);
        assert!(!isolated(&none));
        assert_eq!(
            isolation(&none).unwrap(),
            "none — instances run as plain processes of the operator's user (no root)"
        );
        let some = status_with(&[Some(Strategy::UnixUser), Some(Strategy::Process)]);
        assert!(isolation(&some).unwrap().starts_with("partial — 1 of 2"));
        let all = status_with(&[Some(Strategy::UnixUser)]);
        assert!(isolated(&all));
        assert!(isolation(&all).unwrap().starts_with("unix-user"));
        // A server that does not say counts as not isolated.
        assert!(!isolated(&status_with(&[None])));
        assert_eq!(isolation(&status_with(&[])), None);
    }
}
