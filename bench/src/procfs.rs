//! Reading `/proc`: the process table (pid, parent, process group, name), a process's command
//! line, and its memory from `smaps_rollup`. Read-only; processes vanish while we read, and a
//! missing one is simply left out.

use std::io;

use enjin_supervisor::probe::read_stat;

/// A process as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub ppid: u32,
    pub pgrp: u32,
}

/// Every live process (zombies left out).
pub fn table() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_stat(pid).ok())
        .filter(|s| !s.is_dead())
        .filter_map(|s| {
            Some(ProcStat {
                pid: u32::try_from(s.pid).ok()?,
                comm: s.comm,
                ppid: u32::try_from(s.ppid).ok()?,
                pgrp: u32::try_from(s.pgrp).ok()?,
            })
        })
        .collect()
}

/// `root` and every process below it, by parent pid; `root` first.
pub fn tree(table: &[ProcStat], root: u32) -> Vec<&ProcStat> {
    let mut found: Vec<&ProcStat> = table.iter().filter(|s| s.pid == root).collect();
    let mut next = 0;
    while let Some(parent) = found.get(next).map(|s| s.pid) {
        found.extend(table.iter().filter(|s| s.ppid == parent && s.pid != parent));
        next += 1;
    }
    found
}

/// The live children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    table().iter().filter(|s| s.ppid == pid).map(|s| s.pid).collect()
}

/// The arguments of `pid` (empty for kernel threads and vanished processes).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The CPU time `pid` has used (user + system), in clock ticks; `None` once it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    read_stat(pid).ok().map(|s| s.utime + s.stime)
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    status_field(std::process::id(), "Uid:").is_some_and(|v| v.split_whitespace().nth(1) == Some("0"))
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string())
}

/// One process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident pages, shared ones (code, the page cache) counted in full.
    pub rss: u64,
    /// Resident pages, each shared one divided among the processes that map it.
    pub pss: u64,
    /// Private_Clean + Private_Dirty: what only this process holds.
    pub private: u64,
    pub threads: u64,
}

/// `pid`'s memory from `/proc/<pid>/smaps_rollup` and its thread count from `status`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text =
        std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let mut memory = Memory::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(kib)) = (fields.next(), fields.next().and_then(|v| v.parse::<u64>().ok()))
        else {
            continue;
        };
        match key {
            "Rss:" => memory.rss = kib,
            "Pss:" => memory.pss = kib,
            "Private_Clean:" | "Private_Dirty:" => memory.private += kib,
            _ => {}
        }
    }
    if memory.rss == 0 {
        return Err(io::Error::other(format!("{path} has no Rss line (a kernel thread, or gone)")));
    }
    memory.threads = status_field(pid, "Threads:").and_then(|t| t.parse().ok()).unwrap_or(0);
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32) -> ProcStat {
        ProcStat { pid, comm: format!("p{pid}"), ppid, pgrp: 1 }
    }

    #[test]
    fn tree_follows_parents() {
        let table = [stat(1, 0), stat(10, 1), stat(11, 10), stat(12, 11), stat(20, 1), stat(13, 10)];
        let pids: Vec<u32> = tree(&table, 10).iter().map(|s| s.pid).collect();
        assert_eq!(pids, [10, 11, 13, 12]);
        assert!(tree(&table, 99).is_empty());
    }

    #[test]
    fn reads_our_own_memory() {
        let m = memory(std::process::id()).expect("our own smaps_rollup");
        assert!(m.rss > 0 && m.pss > 0 && m.private > 0 && m.threads >= 1, "{m:?}");
        assert!(!cmdline(std::process::id()).is_empty());
    }
}
