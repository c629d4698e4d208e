//! `enjin agent --ring N --dir D`: a ring agent, started by its parent in the directory the
//! parent prepared. Asked to stop (SIGTERM, Ctrl-C) it stops its children gracefully; killed
//! (SIGKILL, a crash) it leaves them running, and the next agent on the same directory
//! re-adopts them — never a second copy.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use enjin_agent::{
    AgentConfig, BusPackageSource, PackageCache, RoutingLauncher, SandboxLauncher, SupervisedChildren,
    forward_observations,
};
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
    {
        use std::os::unix::fs::PermissionsExt;
        // The supervisor's state and the instances' logs: root's alone.
        std::fs::set_permissions(&children_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to set the mode of {}", children_dir.display()))?;
        // Instances' directories (disk images, mount points) and unpacked packages: root's
        // alone; instances see their files only through their own mounts.
        for dir in [config.dir.join("instances"), config.dir.join("packages")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("failed to set the mode of {}", dir.display()))?;
        }
    }
    let sandbox = match config.sandbox {
        true => {
            let cgroup = enjin_agent::cgroup_parent(config.node);
            match SandboxLauncher::new(&config.dir.join("instances"), &children_dir.join("logs"), &cgroup) {
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
    let cache = Arc::new(PackageCache::new(config.dir.join("packages"), source.clone()));
    let launcher = Arc::new(
        RoutingLauncher::new(ProcessLauncher::new(children_dir.join("logs")), sandbox)
            .with_packages(cache, config.dir.join("work")),
    );
    let (sup_tx, sup_rx) = mpsc::channel(256);
    // Children restored from the supervisor's records start only once a desired set has told
    // the launcher how to run them (their user, their sandbox).
    let config_sup = SupervisorConfig { launch_restored: false, ..SupervisorConfig::new(&children_dir) };
    let supervisor = Supervisor::start(config_sup, launcher.clone(), sup_tx)
        .await
        .with_context(|| format!("failed to start the supervisor in {}", children_dir.display()))?;
    let (report_tx, report_rx) = mpsc::channel(256);
    forward_observations(sup_rx, report_tx);
    let children = Arc::new(SupervisedChildren::new(supervisor.handle(), launcher).with_source(source));
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
