//! The writer thread: the one owner of the write connection, of the revision counter and of the
//! lease deadlines. Callers send it [`Command`]s; it runs them in groups ("group commit"): every
//! command queued at the time (up to a bound) runs in its own SAVEPOINT of one SQLite
//! transaction, the transaction commits (one fsync for the group), and only then are the new
//! revision published and the callers answered. A command that fails rolls back its savepoint
//! alone; the others in the group are not affected.
//!
//! # Fairness under contention
//!
//! Many callers doing compare-and-swap on one key race: in each group only the first
//! transaction whose compare holds wins, the others fail and retry. Answering a group in
//! arrival order made that race unfair in two ways. The caller answered first is also first
//! back, so it kept winning. And the callers split into two cohorts that alternate groups: the
//! group that forms while one cohort's retries are still on their way holds only the other
//! cohort, so every group after a win is full of revisions that win made stale, and the
//! cohort that lands there can lose for seconds. The writer removes both:
//!
//! - **Order within a group.** Of the commands queued together (none was answered yet, so any
//!   order is a valid serial order), the transactions whose compares hold at the start of the
//!   group run first, the longest-losing first ([`Txn::retry`](crate::Txn::retry)), then
//!   those already stale. So the win goes to the caller that has lost most often, and every
//!   loser's failure branch (an `Op::get` there saves a separate read) sees the winner's write.
//! - **Gathering the retries.** After a group in which transactions lost a compare, the writer
//!   waits for as many new commands as there were losers, at most [`LINGER`], before it starts
//!   the next group, so that the retries run together rather than split across two groups.
//!   Commands that were already queued join that group too. A group without a lost compare
//!   never waits.
//! - The losers are answered before the other callers of their group.
//!
//! The bound this gives: with `n` callers each retrying a lost update with its count, every
//! group holds each of them once, with a revision that is current, and the one that has lost
//! most wins. A caller that lost `k` times is passed only by callers that lost at least as
//! often; each of those leaves the race when it wins (its next update starts at 0) and no one
//! joins it, so an update wins within `n` groups. A caller slower than [`LINGER`] to retry
//! misses one group and comes back with a higher count. Callers that do not pass a count are
//! ordered by arrival, which the answer order above keeps roughly round-robin. Only scheduling
//! changes: a compare that fails still fails, and the revision, durability and watch rules
//! are those of any serial order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use super::ops::{self, ExecError, META_COMPACTED, META_NEXT_LEASE, META_REVISION, WriteCtx, backend};
use super::schema::Opened;
use crate::{Lease, LeaseId, Revision, StoreError, Txn, TxnResponse};

/// How long an expiry that failed waits before it is tried again, so that a broken disk does
/// not turn the writer into a busy loop.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// The longest the writer waits for the retries of a group's lost compares before it starts
/// the next group (see the module docs). A retry takes a caller a wakeup and perhaps a read,
/// tens to hundreds of microseconds; the wait costs its full length only when losers do not
/// retry, and only after a group in which a compare lost.
const LINGER: Duration = Duration::from_millis(2);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request to the writer thread. Every command is answered exactly once, after the group it
/// ran in is durable (or failed).
#[derive(Debug)]
pub(super) enum Command {
    Txn {
        txn: Txn,
        reply: Reply<TxnResponse>,
    },
    LeaseGrant {
        ttl: Duration,
        reply: Reply<Lease>,
    },
    LeaseKeepAlive {
        id: LeaseId,
        reply: Reply<Lease>,
    },
    LeaseRevoke {
        id: LeaseId,
        reply: Reply<()>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
    /// Finish the queued commands, then stop. Answered once the file is closed and unlocked.
    Close {
        reply: oneshot::Sender<()>,
    },
}

impl Command {
    /// The caller's count of lost attempts, for ordering a group.
    fn retry(&self) -> u32 {
        match self {
            Command::Txn { txn, .. } => txn.retry,
            _ => 0,
        }
    }

    /// Answers without running it; hands back a `Close`'s reply for the caller to answer last.
    fn refuse(self, err: impl Fn() -> StoreError) -> Option<oneshot::Sender<()>> {
        // A caller that went away no longer wants the answer: ignoring a failed send is right.
        match self {
            Command::Txn { reply, .. } => drop(reply.send(Err(err()))),
            Command::LeaseGrant { reply, .. } | Command::LeaseKeepAlive { reply, .. } => {
                drop(reply.send(Err(err())))
            }
            Command::LeaseRevoke { reply, .. } | Command::Compact { reply, .. } => {
                drop(reply.send(Err(err())))
            }
            Command::Close { reply } => return Some(reply),
        }
        None
    }
}

/// The answer to one command, held back until its group has committed.
enum Outcome {
    Txn(Reply<TxnResponse>, Result<TxnResponse, StoreError>),
    Lease(Reply<Lease>, Result<Lease, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
}

impl Outcome {
    /// The group did not commit: whatever this command did is gone.
    fn fail(self, err: impl Fn() -> StoreError) -> Self {
        match self {
            Outcome::Txn(reply, Ok(_)) => Outcome::Txn(reply, Err(err())),
            Outcome::Lease(reply, Ok(_)) => Outcome::Lease(reply, Err(err())),
            Outcome::Unit(reply, Ok(())) => Outcome::Unit(reply, Err(err())),
            refused => refused,
        }
    }

    fn send(self) {
        // See `Command::refuse`: the caller may have stopped waiting.
        match self {
            Outcome::Txn(reply, result) => drop(reply.send(result)),
            Outcome::Lease(reply, result) => drop(reply.send(result)),
            Outcome::Unit(reply, result) => drop(reply.send(result)),
        }
    }
}

/// A failure that aborted the whole SQLite transaction, not only one savepoint.
struct Fatal(String);

/// Splits a savepoint's result into the command's own result and a fatal error, if any.
fn settle<T>(
    path: &Path,
    result: Result<Result<T, StoreError>, Fatal>,
) -> (Result<T, StoreError>, Option<Fatal>) {
    match result {
        Ok(result) => (result, None),
        Err(Fatal(msg)) => (Err(backend(path, "failed to write", &msg)), Some(Fatal(msg))),
    }
}

/// Lease bookkeeping to apply once the group has committed.
enum LeaseChange {
    Granted(LeaseId, Duration),
    Refreshed(LeaseId),
    Ended(LeaseId),
    /// Its expiry failed; try again a little later.
    Postponed(LeaseId),
}

struct LeaseTimer {
    ttl: Duration,
    deadline: Instant,
}

fn deadline_after(now: Instant, ttl: Duration) -> Instant {
    // TTLs are capped at grant time; saturating keeps a corrupt TTL from panicking.
    now.checked_add(ttl).unwrap_or(now + super::MAX_LEASE_TTL)
}

pub(super) fn ttl_from_ms(ttl_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(1)).min(super::MAX_LEASE_TTL)
}

fn ttl_to_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// The not yet committed state of one group.
struct Batch {
    revision: Revision,
    compacted: Revision,
    next_lease: LeaseId,
    changes: Vec<LeaseChange>,
    outcomes: Vec<Outcome>,
    /// Answers of transactions that lost a compare to another of the group or were already
    /// stale: sent first, and counted to know how many retries to wait for.
    lost: Vec<Outcome>,
}

pub(super) struct Writer {
    path: PathBuf,
    conn: Connection,
    lock: File,
    commands: mpsc::Receiver<Command>,
    revisions: watch::Sender<Revision>,
    max_batch: usize,
    revision: Revision,
    compacted: Revision,
    next_lease: LeaseId,
    leases: HashMap<LeaseId, LeaseTimer>,
    deadlines: BTreeSet<(Instant, LeaseId)>,
    /// Commands taken off the queue before the last group was answered, for the next group.
    held: Vec<Command>,
    /// How many retries of the last group's lost compares to wait for.
    losers: usize,
}

impl Writer {
    /// Starts the writer thread over an opened file. Returns the command queue and the
    /// published revision (updated after every commit that changed it, before any answer).
    pub(super) fn spawn(
        path: PathBuf,
        opened: Opened,
        max_batch: usize,
    ) -> Result<(mpsc::Sender<Command>, watch::Receiver<Revision>), StoreError> {
        let (commands_tx, commands) = mpsc::channel();
        let (revisions, revisions_rx) = watch::channel(opened.revision);
        let mut writer = Writer {
            path: path.clone(),
            conn: opened.conn,
            lock: opened.lock,
            commands,
            revisions,
            max_batch: max_batch.max(1),
            revision: opened.revision,
            compacted: opened.compacted,
            next_lease: opened.next_lease,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            held: Vec::new(),
            losers: 0,
        };
        // As etcd does, a lease's clock restarts on open: the time the store was down does
        // not count against it.
        let now = Instant::now();
        for (id, ttl_ms) in opened.leases {
            let ttl = ttl_from_ms(ttl_ms);
            writer.set_deadline(id, ttl, deadline_after(now, ttl));
        }
        std::thread::Builder::new()
            .name("enjin-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Open { path, reason: format!("cannot start the writer thread: {e}") })?;
        Ok((commands_tx, revisions_rx))
    }

    fn run(mut self) {
        let span = tracing::info_span!("store_writer", path = %self.path.display());
        let _entered = span.enter();
        let path = self.path.clone();
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.serve())) {
            Ok(close) => self.shutdown(close),
            // The callers see their replies dropped and get `Closed`; a human must look.
            Err(_) => tracing::error!(path = %path.display(), "state store writer panicked"),
        }
    }

    /// Serves commands until closed or until every sender is gone; returns the `Close` reply.
    fn serve(&mut self) -> Option<oneshot::Sender<()>> {
        tracing::info!(revision = self.revision, leases = self.leases.len(), "state store writer started");
        loop {
            let mut commands = std::mem::take(&mut self.held);
            let held = commands.len();
            if commands.is_empty() {
                let first = match self.deadlines.first() {
                    None => self.commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(&(deadline, _)) => {
                        self.commands.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    }
                };
                match first {
                    Ok(command) => commands.push(command),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return None,
                }
            }
            while commands.len() < self.max_batch {
                match self.commands.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            let wanted = (held + std::mem::take(&mut self.losers)).min(self.max_batch);
            if commands.len() < wanted {
                let until = Instant::now() + LINGER;
                while commands.len() < wanted {
                    match self.commands.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(command) => commands.push(command),
                        // Gone senders show at the next receive; run what is here first.
                        Err(_) => break,
                    }
                }
            }
            if let Some(close) = self.commit_batch(commands) {
                return Some(close);
            }
        }
    }

    fn shutdown(self, close: Option<oneshot::Sender<()>>) {
        let Writer { path, conn, lock, commands, revisions, revision, held, .. } = self;
        for command in held.into_iter().chain(std::iter::from_fn(|| commands.try_recv().ok())) {
            if let Some(reply) = command.refuse(|| StoreError::Closed) {
                let _ = reply.send(());
            }
        }
        // Later sends fail, and their callers get `Closed`.
        drop(commands);
        if let Err((_, e)) = conn.close() {
            tracing::warn!(path = %path.display(), error = %e, "failed to close state store cleanly");
        }
        // Watches see the revision channel close, drain what is left and end.
        drop(revisions);
        drop(lock);
        tracing::info!(revision, "state store closed");
        if let Some(close) = close {
            let _ = close.send(());
        }
    }

    fn set_deadline(&mut self, id: LeaseId, ttl: Duration, deadline: Instant) {
        if let Some(old) = self.leases.insert(id, LeaseTimer { ttl, deadline }) {
            self.deadlines.remove(&(old.deadline, id));
        }
        self.deadlines.insert((deadline, id));
    }

    fn remove_lease(&mut self, id: LeaseId) {
        if let Some(old) = self.leases.remove(&id) {
            self.deadlines.remove(&(old.deadline, id));
        }
    }

    fn apply_lease_changes(&mut self, changes: Vec<LeaseChange>, now: Instant) {
        for change in changes {
            match change {
                LeaseChange::Granted(id, ttl) => self.set_deadline(id, ttl, deadline_after(now, ttl)),
                LeaseChange::Refreshed(id) => {
                    if let Some(ttl) = self.leases.get(&id).map(|timer| timer.ttl) {
                        self.set_deadline(id, ttl, deadline_after(now, ttl));
                    }
                }
                LeaseChange::Ended(id) => self.remove_lease(id),
                LeaseChange::Postponed(id) => {
                    if let Some(ttl) = self.leases.get(&id).map(|timer| timer.ttl) {
                        self.set_deadline(id, ttl, deadline_after(now, EXPIRY_RETRY));
                    }
                }
            }
        }
    }

    /// Runs `f` in a savepoint: on error only its own writes are rolled back. The outer error
    /// is fatal: SQLite dropped the whole transaction, or the savepoint itself failed.
    fn savepoint<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ExecError>,
    ) -> Result<Result<T, StoreError>, Fatal> {
        let fatal = |e: rusqlite::Error| Fatal(e.to_string());
        self.conn.execute_batch("SAVEPOINT command").map_err(fatal)?;
        match f(&self.conn) {
            Ok(value) => {
                self.conn.execute_batch("RELEASE command").map_err(fatal)?;
                Ok(Ok(value))
            }
            Err(e) => {
                let e = e.into_store(&self.path);
                if self.conn.is_autocommit() {
                    return Err(Fatal(format!("transaction aborted: {e}")));
                }
                self.conn.execute_batch("ROLLBACK TO command; RELEASE command").map_err(fatal)?;
                Ok(Err(e))
            }
        }
    }

    /// Runs one group of commands (and the expiry of due leases) in one SQLite transaction.
    /// Returns the reply of a `Close` found in the group: the commands after it are refused.
    fn commit_batch(&mut self, commands: Vec<Command>) -> Option<oneshot::Sender<()>> {
        let now = Instant::now();
        let expired: Vec<LeaseId> =
            self.deadlines.iter().take_while(|(deadline, _)| *deadline <= now).map(|(_, id)| *id).collect();
        if commands.is_empty() && expired.is_empty() {
            return None;
        }
        let count = commands.len();
        let mut close = None;
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "failed to begin a state store transaction");
            for command in commands {
                close = close.or(command.refuse(|| backend(&self.path, "failed to write", &e)));
            }
            let postponed = expired.into_iter().map(LeaseChange::Postponed).collect();
            self.apply_lease_changes(postponed, now);
            return close;
        }

        let mut batch = Batch {
            revision: self.revision,
            compacted: self.compacted,
            next_lease: self.next_lease,
            changes: Vec::new(),
            outcomes: Vec::with_capacity(count),
            lost: Vec::new(),
        };
        let mut fatal = None;
        if !expired.is_empty() {
            fatal = self.expire(&mut batch, &expired);
        }
        for (command, competed) in self.schedule(commands) {
            if let Some(Fatal(msg)) = &fatal {
                close = close.or(command.refuse(|| backend(&self.path, "failed to write", msg)));
            } else if close.is_some() {
                close = close.or(command.refuse(|| StoreError::Closed));
            } else if let Command::Close { reply } = command {
                close = Some(reply);
            } else {
                fatal = self.apply(command, competed, &mut batch);
            }
        }

        let committed = match fatal {
            Some(Fatal(msg)) => Err(msg),
            None => self
                .write_meta(&batch)
                .and_then(|()| self.conn.execute_batch("COMMIT"))
                .map_err(|e| e.to_string()),
        };
        let now = Instant::now();
        match committed {
            Ok(()) => {
                let changed = batch.revision != self.revision;
                self.revision = batch.revision;
                self.compacted = batch.compacted;
                self.next_lease = batch.next_lease;
                self.apply_lease_changes(batch.changes, now);
                // Publish before answering: a caller that saw its write acknowledged and then
                // starts a watch from "now" must not see that write again.
                if changed {
                    self.revisions.send_replace(self.revision);
                }
                tracing::debug!(
                    commands = count,
                    lost = batch.lost.len(),
                    revision = self.revision,
                    "committed group"
                );
                if !batch.lost.is_empty() {
                    // What is queued now was sent before any loser could retry: it goes into
                    // the next group, and the wait for the retries comes on top of it.
                    while self.held.len() < self.max_batch {
                        match self.commands.try_recv() {
                            Ok(command) => self.held.push(command),
                            Err(_) => break,
                        }
                    }
                    self.losers = batch.lost.len();
                }
                for outcome in batch.lost.into_iter().chain(batch.outcomes) {
                    outcome.send();
                }
            }
            Err(msg) => {
                if !self.conn.is_autocommit()
                    && let Err(e) = self.conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %e, "failed to roll back a failed state store group");
                }
                tracing::error!(error = %msg, commands = count, "state store group failed to commit");
                let postponed = expired.into_iter().map(LeaseChange::Postponed).collect();
                self.apply_lease_changes(postponed, now);
                for outcome in batch.lost.into_iter().chain(batch.outcomes) {
                    outcome.fail(|| backend(&self.path, "failed to commit to", &msg)).send();
                }
            }
        }
        close
    }

    fn write_meta(&self, batch: &Batch) -> rusqlite::Result<()> {
        if batch.revision != self.revision {
            ops::meta_set(&self.conn, META_REVISION, batch.revision)?;
        }
        if batch.compacted != self.compacted {
            ops::meta_set(&self.conn, META_COMPACTED, batch.compacted)?;
        }
        if batch.next_lease != self.next_lease {
            ops::meta_set(&self.conn, META_NEXT_LEASE, batch.next_lease)?;
        }
        Ok(())
    }

    /// Deletes the keys of every expired lease, all in one revision, and the leases themselves.
    fn expire(&self, batch: &mut Batch, expired: &[LeaseId]) -> Option<Fatal> {
        let revision = batch.revision + 1;
        let result = self.savepoint(|conn| {
            let mut ctx = WriteCtx::new(conn, revision);
            let mut deleted = 0;
            for &id in expired {
                deleted += ctx.delete_lease_keys(id)?.len();
                ops::delete_lease(conn, id)?;
            }
            Ok((ctx.changed(), deleted))
        });
        match result {
            Ok(Ok((changed, deleted))) => {
                if changed {
                    batch.revision = revision;
                }
                batch.changes.extend(expired.iter().map(|&id| LeaseChange::Ended(id)));
                tracing::info!(leases = ?expired, keys = deleted, revision = batch.revision, "leases expired");
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(leases = ?expired, error = %e, "failed to expire leases, retrying");
                batch.changes.extend(expired.iter().map(|&id| LeaseChange::Postponed(id)));
                None
            }
            Err(fatal) => Some(fatal),
        }
    }

    /// Orders one group for fairness (see the module docs): the transactions whose compares
    /// hold now first, each part by how often its caller already lost, then arrival. Pairs each
    /// command with whether it competed: whether its compares were checked up front, which is
    /// done only when at least two transactions of the group have compares. Commands after a
    /// `Close` stay where they are, to be refused.
    fn schedule(&self, commands: Vec<Command>) -> Vec<(Command, bool)> {
        let guarded =
            |command: &Command| matches!(command, Command::Txn { txn, .. } if !txn.compare.is_empty());
        let contended = commands.iter().filter(|command| guarded(command)).count() >= 2;
        let mut keyed: Vec<(Command, bool, bool)> = commands
            .into_iter()
            .map(|command| {
                let holds = match &command {
                    Command::Txn { txn, .. } if contended => self.compares_hold(txn),
                    _ => true,
                };
                let competes = contended && guarded(&command);
                (command, holds, competes)
            })
            .collect();
        if contended {
            let end = keyed
                .iter()
                .position(|(command, ..)| matches!(command, Command::Close { .. }))
                .unwrap_or(keyed.len());
            // A stable sort: equals keep their arrival order.
            keyed[..end].sort_by_key(|(command, holds, _)| (Reverse(*holds), Reverse(command.retry())));
        }
        keyed.into_iter().map(|(command, _, competes)| (command, competes)).collect()
    }

    /// Whether every compare of `txn` holds on the store as it is now. A read error counts as
    /// holding: the transaction then meets it again when it runs, and reports it.
    fn compares_hold(&self, txn: &Txn) -> bool {
        txn.compare.iter().all(|compare| match ops::get_kv(&self.conn, &compare.key) {
            Ok(kv) => ops::compare_holds(kv.as_ref(), compare),
            Err(_) => true,
        })
    }

    /// Runs one command in its own savepoint and records its answer in `batch`. A transaction
    /// that `competed` (see [`Writer::schedule`]) and failed its compare counts as a loser.
    fn apply(&self, command: Command, competed: bool, batch: &mut Batch) -> Option<Fatal> {
        match command {
            Command::Txn { txn, reply } => {
                let revision = batch.revision + 1;
                let result = match txn.validate() {
                    Ok(()) => self.savepoint(|conn| ops::exec_txn(conn, &txn, revision)),
                    Err(e) => Ok(Err(e)),
                };
                let (result, fatal) = settle(&self.path, result);
                let result = result.map(|outcome| {
                    if outcome.changed {
                        batch.revision = revision;
                    }
                    TxnResponse {
                        succeeded: outcome.succeeded,
                        revision: batch.revision,
                        responses: outcome.responses,
                    }
                });
                let lost = competed && result.as_ref().is_ok_and(|response| !response.succeeded);
                let answers = if lost { &mut batch.lost } else { &mut batch.outcomes };
                answers.push(Outcome::Txn(reply, result));
                fatal
            }
            Command::LeaseGrant { ttl, reply } => {
                let id = batch.next_lease;
                let result = match id.checked_add(1) {
                    Some(_) => self.savepoint(|conn| Ok(ops::insert_lease(conn, id, ttl_to_ms(ttl))?)),
                    None => Ok(Err(StoreError::Invalid("lease ids are exhausted".into()))),
                };
                let (result, fatal) = settle(&self.path, result);
                let result = result.map(|()| {
                    batch.next_lease = id + 1;
                    batch.changes.push(LeaseChange::Granted(id, ttl));
                    Lease { id, ttl }
                });
                batch.outcomes.push(Outcome::Lease(reply, result));
                fatal
            }
            Command::LeaseKeepAlive { id, reply } => {
                let result = self.savepoint(|conn| {
                    ops::lease_ttl_ms(conn, id)?.ok_or(ExecError::Store(StoreError::LeaseNotFound(id)))
                });
                let (result, fatal) = settle(&self.path, result);
                let result = result.map(|ttl_ms| {
                    batch.changes.push(LeaseChange::Refreshed(id));
                    Lease { id, ttl: ttl_from_ms(ttl_ms) }
                });
                batch.outcomes.push(Outcome::Lease(reply, result));
                fatal
            }
            Command::LeaseRevoke { id, reply } => {
                let revision = batch.revision + 1;
                let result = self.savepoint(|conn| {
                    if ops::lease_ttl_ms(conn, id)?.is_none() {
                        return Err(StoreError::LeaseNotFound(id).into());
                    }
                    let mut ctx = WriteCtx::new(conn, revision);
                    let deleted = ctx.delete_lease_keys(id)?.len();
                    ops::delete_lease(conn, id)?;
                    Ok((ctx.changed(), deleted))
                });
                let (result, fatal) = settle(&self.path, result);
                let result = result.map(|(changed, deleted)| {
                    if changed {
                        batch.revision = revision;
                    }
                    batch.changes.push(LeaseChange::Ended(id));
                    tracing::debug!(lease = id, keys = deleted, revision = batch.revision, "lease revoked");
                });
                batch.outcomes.push(Outcome::Unit(reply, result));
                fatal
            }
            Command::Compact { revision, reply } => {
                let result = if revision > batch.revision {
                    Ok(Err(StoreError::FutureRevision { requested: revision, current: batch.revision }))
                } else if revision < batch.compacted {
                    Ok(Err(StoreError::Compacted { requested: revision, compacted: batch.compacted }))
                } else if revision == batch.compacted {
                    Ok(Ok(()))
                } else {
                    self.savepoint(|conn| Ok(ops::compact_history(conn, revision)?))
                };
                let (result, fatal) = settle(&self.path, result);
                let result = result.map(|()| {
                    if revision > batch.compacted {
                        tracing::info!(revision, "compacted history");
                        batch.compacted = revision;
                    }
                });
                batch.outcomes.push(Outcome::Unit(reply, result));
                fatal
            }
            Command::Close { reply } => {
                // `commit_batch` handles `Close` itself; answering here keeps it answered.
                let _ = reply.send(());
                None
            }
        }
    }
}
