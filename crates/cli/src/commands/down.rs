//! `enjin down [--purge]`: stop the data directory's `enjin up` if it runs, then take apart
//! what its cloud made on this machine (see `cloud.rs`), and with `--purge` remove the data
//! directory too.

use std::time::Duration;

use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};

use enjin_node::cloud;

use crate::args::{DownArgs, Global};
use crate::config;

/// How long `enjin up` gets to stop its hosts and edge before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(40);

pub fn run(g: &Global, args: &DownArgs) -> Result<()> {
    let dir = config::data_dir(g)?;
    let absolute =
        std::path::absolute(&dir).with_context(|| format!("failed to resolve {}", dir.display()))?;
    let id = enjin_net::cloud::read_id(&dir);
    // By id while the data directory holds one; by path once it is gone.
    let record = enjin_net::cloud::records()
        .into_iter()
        .find(|r| id.as_deref().map_or(r.data_dir == absolute, |id| r.id == id));
    let up = cloud::running_up(&dir)
        .or_else(|| record.as_ref().map(|r| (r.pid, r.start_time)).filter(|(p, s)| cloud::running(*p, *s)));
    let left = left_running(&dir);
    if !dir.exists() && record.is_none() && up.is_none() && left.is_empty() {
        anyhow::bail!(
            "nothing to take down: no data directory at {} and no cloud on this machine recorded for it",
            dir.display()
        );
    }

    let mut stopped = Vec::new();
    if let Some((pid, start)) = up {
        println!("enjin down: stopping enjin up (pid {pid})");
        cloud::stop(pid, start, STOP_PATIENCE);
        stopped.push(pid);
    }
    cloud::release(&dir);
    // The agents and the edge outlive a crashed `enjin up` (to be adopted at its next start).
    for (pid, start) in left {
        cloud::stop(pid, start, Duration::from_secs(20));
        stopped.push(pid);
    }
    let mut removed = match &record {
        Some(r) => cloud::take_apart(r).with_context(|| format!("failed to take apart cloud {}", r.id))?,
        None => cloud::Removed::default(),
    };
    removed.stopped.splice(0..0, stopped);
    if removed.loop_devices.is_empty() {
        removed.loop_devices = enjin_sys::disk::detach_under(&absolute);
    }
    if removed.is_empty() {
        println!("enjin down: nothing of {} runs or is left on this machine", dir.display());
    } else {
        println!("enjin down: {removed}");
    }
    if args.purge && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("failed to remove {}", dir.display()))?;
        println!("enjin down: removed {}", dir.display());
    }
    Ok(())
}

/// The agents and the edge a crashed `enjin up` of `dir` left running: processes started with
/// `--dir` naming a directory in it (`enjin agent --dir <data-dir>/hosts/<host>`, `enjin edge
/// --dir <data-dir>/edge`).
fn left_running(dir: &std::path::Path) -> Vec<(u32, u64)> {
    let mut prefixes = vec![dir.to_path_buf()];
    if let Ok(a) = std::path::absolute(dir) {
        prefixes.push(a);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.windows(2).any(|w| {
            w[0] == b"--dir"
                && prefixes
                    .iter()
                    .any(|p| std::path::Path::new(std::ffi::OsStr::from_bytes(w[1])).starts_with(p))
        });
        if !ours || pid == std::process::id() {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else { continue };
        if let Ok(start) = enjin_sys::proc::start_time(enjin_sys::Pid::from_raw(raw)) {
            out.push((pid, start));
        }
    }
    out
}
