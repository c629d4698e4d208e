//! `enjin agent --ring N --dir D`: a ring agent as a process, started by its parent in the
//! directory the parent prepared. Asked to stop (its `shutdown` completes) it stops its
//! children gracefully; killed (SIGKILL, a crash) it leaves them running, and the next agent on
//! the same directory re-adopts them — never a second copy.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use enjin_supervisor::{ProcessLauncher, Supervisor, SupervisorConfig};
use tokio::sync::mpsc;

use crate::{
    AgentConfig, AgentError, BusPackageSource, ConfigError, PackageCache, RoutingLauncher, SandboxLauncher,
    SupervisedChildren, forward_observations,
};

/// What the agent process is started with: its ring, and the directory its parent prepared
/// (`agent.json`, keys, certificates, trust bundle).
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The ring asked for on the command line; must match the directory's `agent.json`.
    pub ring: u8,
    /// The agent's directory.
    pub dir: PathBuf,
}

/// Why the agent process could not start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `agent.json` is missing or invalid.
    #[error("cannot start the agent")]
    Config(#[source] ConfigError),
    /// The directory belongs to an agent of another ring: the wrong `--ring` or `--dir`.
    #[error("{} is prepared for a ring {prepared} agent, not ring {asked}", dir.display())]
    WrongRing {
        /// The agent's directory.
        dir: PathBuf,
        /// The ring in its `agent.json`.
        prepared: u8,
        /// The ring asked for.
        asked: u8,
    },
    /// A directory for the children's state, logs, instances or packages could not be made.
    #[error("failed to create {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// The error from the filesystem.
        #[source]
        source: std::io::Error,
    },
    /// One of those directories could not be made private (0700).
    #[error("failed to set the mode of {}", path.display())]
    Mode {
        /// The directory.
        path: PathBuf,
        /// The error from the filesystem.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor did not start; most often another agent already runs on this directory.
    #[error("failed to start the supervisor in {}", dir.display())]
    Supervisor {
        /// The supervisor's directory, `<dir>/children`.
        dir: PathBuf,
        /// Why it did not start.
        #[source]
        source: enjin_supervisor::StartError,
    },
    /// The agent could not join the bus; its children were stopped.
    #[error("the agent failed")]
    Agent(#[source] AgentError),
}

/// Run the agent in `config.dir` until `shutdown` completes, then stop its children.
pub async fn run(config: ProcessConfig, shutdown: impl Future<Output = ()>) -> Result<(), ProcessError> {
    let agent = AgentConfig::load(&config.dir).map_err(ProcessError::Config)?;
    if agent.ring != config.ring {
        return Err(ProcessError::WrongRing { dir: config.dir, prepared: agent.ring, asked: config.ring });
    }
    let children_dir = agent.children_dir();
    create(&children_dir.join("logs"))?;
    // The supervisor's state and the instances' logs: root's alone.
    private(&children_dir)?;
    // Instances' directories (disk images, mount points) and unpacked packages: root's alone;
    // instances see their files only through their own mounts.
    for dir in [agent.dir.join("instances"), agent.dir.join("packages")] {
        create(&dir)?;
        private(&dir)?;
    }
    let sandbox = match agent.sandbox {
        true => {
            let cgroup = crate::cgroup_parent(agent.node);
            match SandboxLauncher::new(&agent.dir.join("instances"), &children_dir.join("logs"), &cgroup) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no unix-user isolation here: cgroups unavailable");
                    None
                }
            }
        }
        false => None,
    };
    let source = Arc::new(BusPackageSource::default());
    let cache = Arc::new(PackageCache::new(agent.dir.join("packages"), source.clone()));
    let launcher = Arc::new(
        RoutingLauncher::new(ProcessLauncher::new(children_dir.join("logs")), sandbox)
            .with_packages(cache, agent.dir.join("work")),
    );
    let (sup_tx, sup_rx) = mpsc::channel(256);
    // Children restored from the supervisor's records start only once a desired set has told
    // the launcher how to run them (their user, their sandbox).
    let supervisor_config =
        SupervisorConfig { launch_restored: false, ..SupervisorConfig::new(&children_dir) };
    let supervisor = Supervisor::start(supervisor_config, launcher.clone(), sup_tx)
        .await
        .map_err(|source| ProcessError::Supervisor { dir: children_dir.clone(), source })?;
    let (report_tx, report_rx) = mpsc::channel(256);
    forward_observations(sup_rx, report_tx);
    let children = Arc::new(SupervisedChildren::new(supervisor.handle(), launcher).with_source(source));
    let result = crate::run(agent, children, report_rx, shutdown).await;
    if let Err(e) = supervisor.shutdown().await {
        tracing::warn!(error = %e, "supervisor was already gone");
    }
    result.map_err(ProcessError::Agent)
}

fn create(dir: &Path) -> Result<(), ProcessError> {
    std::fs::create_dir_all(dir).map_err(|source| ProcessError::Create { path: dir.to_path_buf(), source })
}

fn private(dir: &Path) -> Result<(), ProcessError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| ProcessError::Mode { path: dir.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_agent_prepared_for_another_ring_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = crate::AgentFile {
            ring: 1,
            node: uuid::Uuid::new_v4(),
            hub: "127.0.0.1:7481".parse().expect("addr"),
            server_name: "localhost".into(),
            sandbox: false,
            rotate_key_after_seconds: None,
            nats: None,
        };
        AgentConfig::write(dir.path(), &file).expect("write agent.json");
        let config = ProcessConfig { ring: 2, dir: dir.path().to_path_buf() };
        let err = run(config, std::future::pending()).await.expect_err("wrong ring");
        assert!(err.to_string().contains("ring 1 agent, not ring 2"), "{err}");
    }
}
