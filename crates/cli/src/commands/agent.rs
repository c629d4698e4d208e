//! `enjin agent --ring N --dir D`: a ring agent, started by its parent in the directory the
//! parent prepared. Asked to stop (SIGTERM, Ctrl-C) it stops its children gracefully; killed
//! (SIGKILL, a crash) it leaves them running, and the next agent on the same directory
//! re-adopts them — never a second copy.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use enjin_agent::{AgentConfig, SupervisedChildren, forward_observations};
use enjin_supervisor::{ProcessLauncher, Supervisor, SupervisorConfig};
use tokio::sync::mpsc;

use crate::args::AgentArgs;

pub async fn run(args: &AgentArgs) -> Result<()> {
    let config = AgentConfig::load(&args.dir).context("cannot start the agent")?;
    if config.ring != args.ring {
        bail!("{} is prepared for a ring {} agent, not ring {}", args.dir.display(), config.ring, args.ring);
    }
    let children_dir = config.children_dir();
    std::fs::create_dir_all(children_dir.join("logs"))
        .with_context(|| format!("failed to create {}", children_dir.display()))?;
    // Children run as plain processes here; the unix-user sandbox plugs in as another launcher.
    tracing::warn!("children run with the process strategy: no per-child user, cgroup or namespaces yet");
    let launcher = Arc::new(ProcessLauncher::new(children_dir.join("logs")));
    let (sup_tx, sup_rx) = mpsc::channel(256);
    let supervisor = Supervisor::start(SupervisorConfig::new(&children_dir), launcher, sup_tx)
        .await
        .with_context(|| format!("failed to start the supervisor in {}", children_dir.display()))?;
    let (report_tx, report_rx) = mpsc::channel(256);
    forward_observations(sup_rx, report_tx);
    let children = Arc::new(SupervisedChildren::new(supervisor.handle()));
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let result = enjin_agent::run(config, children, report_rx, stop).await;
    if let Err(e) = supervisor.shutdown().await {
        tracing::warn!(error = %e, "supervisor was already gone");
    }
    result.context("the agent failed")
}
