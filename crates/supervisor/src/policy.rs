//! Restart policies in the Erlang/OTP style, as a pure state machine: no clocks, no I/O. The
//! supervisor feeds a [`RestartTracker`] the times a child started and exited; the tracker answers
//! whether and when to restart it, or that the child has failed and its parent must decide.
//!
//! - `permanent` children are always restarted, `transient` ones only after an abnormal exit
//!   (non-zero code, a signal, or an exit nobody could see), `temporary` ones never.
//! - Intensity: at most `max_restarts` restarts inside any window of `period`. A restart counts at
//!   the moment it is due (exit time plus backoff), so the bound holds for when children really
//!   start, not for when the decision was taken. One restart more is a failure, as in OTP, where
//!   the supervisor then gives up and escalates to its own parent.
//! - Backoff: `initial * multiplier^n` for the n-th restart of a crash loop, capped at `max`, with
//!   optional jitter drawn from a seeded generator (deterministic for a given seed). Within a crash
//!   loop delays never decrease, jitter included; a run of at least `reset_after` ends the loop.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Which exits a child is restarted after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

impl Restart {
    /// The lowercase name used in specs and messages: `permanent`, `transient`, `temporary`.
    pub fn name(self) -> &'static str {
        match self {
            Restart::Permanent => "permanent",
            Restart::Transient => "transient",
            Restart::Temporary => "temporary",
        }
    }
}

/// At most `max_restarts` restarts in any window of `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intensity {
    /// Restarts allowed inside one window; the next one fails the child. 0 means the first exit
    /// that would restart it fails it instead.
    pub max_restarts: u32,
    /// The sliding window's length, longer than zero; written as `period_ms`.
    #[serde(rename = "period_ms", with = "crate::serde_ms")]
    pub period: Duration,
}

impl Default for Intensity {
    /// Five restarts a minute: lenient enough for an app that crashes on a bad request now and
    /// then, strict enough that a crash loop is reported within seconds.
    fn default() -> Self {
        Intensity { max_restarts: 5, period: Duration::from_secs(60) }
    }
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The wait before the first restart of a crash loop (100 ms by default); at most `max`.
    /// Written as `initial_ms`.
    #[serde(rename = "initial_ms", with = "crate::serde_ms")]
    pub initial: Duration,
    /// No wait is longer than this, jitter included (30 s by default). Written as `max_ms`.
    #[serde(rename = "max_ms", with = "crate::serde_ms")]
    pub max: Duration,
    /// Each restart of a crash loop waits this many times the previous base delay; finite and
    /// at least 1 (1 keeps the delay constant).
    pub multiplier: f64,
    /// Up to this fraction of the delay is added at random, so that children that crashed
    /// together do not restart in lockstep. 0 turns it off.
    pub jitter: f64,
    /// A run at least this long ends a crash loop: the next restart waits `initial` again.
    #[serde(rename = "reset_after_ms", with = "crate::serde_ms")]
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.1,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// No waiting at all; for tests and for children that must come back at once.
    pub fn none() -> Self {
        Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            multiplier: 1.0,
            jitter: 0.0,
            ..Self::default()
        }
    }
}

/// Everything that decides whether a child comes back.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// Which exits are followed by a restart; `permanent` when left out.
    #[serde(default)]
    pub restart: Restart,
    /// How many restarts are too many; five a minute when left out.
    #[serde(default)]
    pub intensity: Intensity,
    /// How long to wait before each restart.
    #[serde(default)]
    pub backoff: Backoff,
}

/// Why a [`RestartPolicy`] is refused by [`RestartPolicy::validate`]; the spec's author must fix
/// it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// `intensity.period` is zero: no window could hold a restart.
    #[error("restart period must be longer than zero")]
    ZeroPeriod,
    /// The multiplier is below 1 (delays would shrink in a crash loop), NaN or infinite.
    #[error("backoff multiplier {0} must be a finite number of at least 1")]
    Multiplier(f64),
    /// The jitter fraction is outside 0..=1, or NaN.
    #[error("backoff jitter {0} must be between 0 and 1")]
    Jitter(f64),
    /// `initial` is longer than `max`.
    #[error("initial backoff {initial:?} is longer than the maximum backoff {max:?}")]
    InitialAboveMax {
        /// The configured first delay.
        initial: Duration,
        /// The configured cap.
        max: Duration,
    },
}

impl RestartPolicy {
    /// Checks the bounds listed in [`PolicyError`]; the tracker relies on them (a zero period
    /// or a NaN multiplier would make its arithmetic meaningless).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let b = &self.backoff;
        if self.intensity.period.is_zero() {
            return Err(PolicyError::ZeroPeriod);
        }
        if !b.multiplier.is_finite() || b.multiplier < 1.0 {
            return Err(PolicyError::Multiplier(b.multiplier));
        }
        if !(0.0..=1.0).contains(&b.jitter) {
            return Err(PolicyError::Jitter(b.jitter));
        }
        if b.initial > b.max {
            return Err(PolicyError::InitialAboveMax { initial: b.initial, max: b.max });
        }
        Ok(())
    }
}

/// How a child's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Nobody could see how it ended: it was adopted (not our child, so it cannot be waited for),
    /// it could not be launched at all, or it was stopped for being unhealthy. Counts as abnormal.
    Unknown,
}

impl Exit {
    /// Exit code 0; everything else is abnormal.
    pub fn is_normal(self) -> bool {
        self == Exit::Code(0)
    }

    /// Reads a wait status: the exit code when the process exited, the signal when one killed
    /// it, [`Exit::Unknown`] for anything else (a stopped or continued status).
    pub fn from_std(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Unknown,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => match crate::child::Signal::from_number(*s) {
                Some(sig) => write!(f, "signal {s} (SIG{})", sig.name()),
                None => write!(f, "signal {s}"),
            },
            Exit::Unknown => f.write_str("an unknown status"),
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start the child again once `after` has passed; the restart is already counted against
    /// the intensity.
    Restart {
        /// The backoff delay, measured from the exit; zero means at once.
        after: Duration,
    },
    /// Leave the child down. Final for [`GiveUpReason::Intensity`]: the tracker refuses every
    /// later restart too.
    GiveUp(GiveUpReason),
}

/// Why a child is not restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GiveUpReason {
    /// A temporary child is never restarted.
    Temporary {
        /// How it ended, normal or not.
        exit: Exit,
    },
    /// A transient child exited normally.
    Normal {
        /// Always exit code 0.
        exit: Exit,
    },
    /// More restarts than the intensity allows: the child has failed and its parent must decide.
    Intensity {
        /// The policy's limit that was exceeded.
        max_restarts: u32,
        /// The policy's window.
        period: Duration,
    },
}

impl GiveUpReason {
    /// Whether the child has failed (as opposed to having finished).
    pub fn is_failure(self) -> bool {
        matches!(self, GiveUpReason::Intensity { .. })
    }
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUpReason::Temporary { .. } => f.write_str("a temporary child is not restarted"),
            GiveUpReason::Normal { .. } => {
                f.write_str("a transient child that exited normally is not restarted")
            }
            GiveUpReason::Intensity { max_restarts, period } => write!(
                f,
                "restart intensity exceeded: more than {max_restarts} restarts in {period:?}; the parent must decide"
            ),
        }
    }
}

/// The restart state of one child under one policy. Times are monotonic instants supplied by the
/// caller, which keeps this pure and lets tests run on a virtual clock.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    /// When each restart inside the current intensity window is due, oldest first.
    window: VecDeque<Instant>,
    /// Restarts in the current crash loop.
    attempt: u32,
    last_delay: Duration,
    last_start: Option<Instant>,
    total_restarts: u32,
    failed: Option<GiveUpReason>,
    rng: u64,
}

impl RestartTracker {
    /// `seed` makes jitter deterministic; the supervisor derives it from the child's id.
    pub fn new(policy: RestartPolicy, seed: u64) -> Self {
        RestartTracker {
            policy,
            window: VecDeque::new(),
            attempt: 0,
            last_delay: Duration::ZERO,
            last_start: None,
            total_restarts: 0,
            failed: None,
            rng: seed,
        }
    }

    /// The policy the tracker was built with; a changed policy needs a new tracker.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Restarts granted so far.
    pub fn restarts(&self) -> u32 {
        self.total_restarts
    }

    /// Whether the intensity was exceeded; the tracker then refuses every further restart.
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// The child's process started (or was adopted) at `at`.
    pub fn started(&mut self, at: Instant) {
        self.last_start = Some(at);
    }

    /// The child's process ended with `exit` at `at`.
    pub fn exited(&mut self, exit: Exit, at: Instant) -> Decision {
        if let Some(reason) = self.failed {
            return Decision::GiveUp(reason);
        }
        let ran = self.last_start.take().map(|s| at.saturating_duration_since(s)).unwrap_or_default();
        if ran >= self.policy.backoff.reset_after {
            self.attempt = 0;
            self.last_delay = Duration::ZERO;
        }
        match self.policy.restart {
            Restart::Temporary => return Decision::GiveUp(GiveUpReason::Temporary { exit }),
            Restart::Transient if exit.is_normal() => {
                return Decision::GiveUp(GiveUpReason::Normal { exit });
            }
            Restart::Permanent | Restart::Transient => {}
        }
        let delay = self.next_delay();
        let due = at + delay;
        let period = self.policy.intensity.period;
        // The window ending at `due` is (due - period, due].
        while self.window.front().is_some_and(|&t| t + period <= due) {
            self.window.pop_front();
        }
        if self.window.len() >= self.policy.intensity.max_restarts as usize {
            let reason = GiveUpReason::Intensity { max_restarts: self.policy.intensity.max_restarts, period };
            self.failed = Some(reason);
            return Decision::GiveUp(reason);
        }
        self.window.push_back(due);
        self.attempt = self.attempt.saturating_add(1);
        self.last_delay = delay;
        self.total_restarts = self.total_restarts.saturating_add(1);
        Decision::Restart { after: delay }
    }

    fn next_delay(&mut self) -> Duration {
        let b = self.policy.backoff;
        let exponent = i32::try_from(self.attempt.min(64)).unwrap_or(64);
        let base = b.initial.as_secs_f64() * b.multiplier.powi(exponent);
        let jittered = if b.jitter > 0.0 { base * (1.0 + b.jitter * self.next_unit()) } else { base };
        // `f64::min` picks the number when the other side is NaN or infinite overflow.
        let capped = jittered.min(b.max.as_secs_f64());
        let delay = Duration::try_from_secs_f64(capped).unwrap_or(b.max).min(b.max);
        delay.max(self.last_delay)
    }

    /// A uniform number in [0, 1) from splitmix64.
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(restart: Restart, r: u32, t: u64) -> RestartPolicy {
        RestartPolicy {
            restart,
            intensity: Intensity { max_restarts: r, period: ms(t) },
            backoff: Backoff {
                initial: ms(10),
                max: ms(1000),
                multiplier: 2.0,
                jitter: 0.0,
                reset_after: ms(5000),
            },
        }
    }

    #[test]
    fn crash_loop_backs_off_then_fails() {
        let mut tr = RestartTracker::new(policy(Restart::Permanent, 3, 10_000), 1);
        let mut now = Instant::now();
        let mut delays = Vec::new();
        loop {
            tr.started(now);
            match tr.exited(Exit::Code(1), now + ms(1)) {
                Decision::Restart { after } => {
                    delays.push(after);
                    now += ms(1) + after;
                }
                Decision::GiveUp(reason) => {
                    assert!(reason.is_failure(), "{reason}");
                    break;
                }
            }
        }
        assert_eq!(delays, vec![ms(10), ms(20), ms(40)]);
        assert_eq!(tr.restarts(), 3);
        assert!(tr.has_failed());
        assert!(matches!(tr.exited(Exit::Code(1), now), Decision::GiveUp(_)));
    }

    #[test]
    fn restarts_spread_over_the_period_are_allowed() {
        let mut tr = RestartTracker::new(policy(Restart::Permanent, 2, 1000), 1);
        let start = Instant::now();
        for i in 0..10u64 {
            tr.started(start + ms(i * 600));
            let d = tr.exited(Exit::Signal(9), start + ms(i * 600 + 1));
            assert!(matches!(d, Decision::Restart { .. }), "restart {i}: {d:?}");
        }
    }

    #[test]
    fn stable_run_resets_backoff() {
        let mut tr = RestartTracker::new(policy(Restart::Permanent, 100, 1000), 1);
        let mut now = Instant::now();
        for _ in 0..4 {
            tr.started(now);
            now += ms(1);
            let Decision::Restart { after } = tr.exited(Exit::Code(2), now) else { panic!("gave up") };
            now += after;
        }
        tr.started(now);
        now += ms(6000);
        assert_eq!(tr.exited(Exit::Code(2), now), Decision::Restart { after: ms(10) });
    }

    #[test]
    fn transient_and_temporary() {
        let now = Instant::now();
        let mut t = RestartTracker::new(policy(Restart::Transient, 5, 1000), 1);
        t.started(now);
        assert!(matches!(t.exited(Exit::Code(0), now), Decision::GiveUp(GiveUpReason::Normal { .. })));
        t.started(now);
        assert!(matches!(t.exited(Exit::Code(3), now), Decision::Restart { .. }));
        t.started(now);
        assert!(matches!(t.exited(Exit::Unknown, now), Decision::Restart { .. }));
        let mut t = RestartTracker::new(policy(Restart::Temporary, 5, 1000), 1);
        t.started(now);
        let d = t.exited(Exit::Signal(9), now);
        assert!(matches!(d, Decision::GiveUp(r) if !r.is_failure()));
    }

    #[test]
    fn zero_intensity_fails_on_first_crash() {
        let now = Instant::now();
        let mut t = RestartTracker::new(policy(Restart::Permanent, 0, 1000), 1);
        t.started(now);
        assert!(matches!(t.exited(Exit::Code(1), now), Decision::GiveUp(r) if r.is_failure()));
    }

    #[test]
    fn validation() {
        assert_eq!(RestartPolicy::default().validate(), Ok(()));
        let mut p = RestartPolicy::default();
        p.backoff.multiplier = 0.5;
        assert!(p.validate().is_err());
        let mut p = RestartPolicy::default();
        p.backoff.jitter = 1.5;
        assert!(p.validate().is_err());
        let mut p = RestartPolicy::default();
        p.intensity.period = Duration::ZERO;
        assert_eq!(p.validate(), Err(PolicyError::ZeroPeriod));
        let mut p = RestartPolicy::default();
        p.backoff.initial = ms(10_000);
        p.backoff.max = ms(1);
        assert!(p.validate().expect_err("initial above max").to_string().contains("longer than the maximum"));
    }

    #[test]
    fn policy_round_trips_through_json() {
        let p = RestartPolicy::default();
        let json = serde_json::to_string(&p).expect("serialise");
        assert!(json.contains("\"period_ms\":60000"), "{json}");
        let back: RestartPolicy = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, p);
    }

    #[derive(Debug, Clone)]
    struct Run {
        /// How long the process ran before exiting, in ms.
        ran: u64,
        exit: Exit,
    }

    fn arb_exit() -> impl Strategy<Value = Exit> {
        prop_oneof![
            Just(Exit::Code(0)),
            (1..255i32).prop_map(Exit::Code),
            (1..32i32).prop_map(Exit::Signal),
            Just(Exit::Unknown),
        ]
    }

    fn arb_runs() -> impl Strategy<Value = Vec<Run>> {
        prop::collection::vec(
            (prop_oneof![0..50u64, 0..3000u64], arb_exit()).prop_map(|(ran, exit)| Run { ran, exit }),
            1..60,
        )
    }

    fn arb_policy() -> impl Strategy<Value = RestartPolicy> {
        (
            prop_oneof![Just(Restart::Permanent), Just(Restart::Transient), Just(Restart::Temporary)],
            0..8u32,
            1..5000u64,
            0..200u64,
            1.0..4.0f64,
            0..2000u64,
            prop_oneof![Just(0.0), 0.0..1.0f64],
            1..3000u64,
        )
            .prop_map(|(restart, r, t, initial, multiplier, extra, jitter, reset)| RestartPolicy {
                restart,
                intensity: Intensity { max_restarts: r, period: ms(t) },
                backoff: Backoff {
                    initial: ms(initial),
                    max: ms(initial + extra),
                    multiplier,
                    jitter,
                    reset_after: ms(reset),
                },
            })
    }

    proptest! {
        #[test]
        fn never_more_than_r_restarts_in_any_window(policy in arb_policy(), runs in arb_runs(), seed: u64) {
            let mut tr = RestartTracker::new(policy, seed);
            let origin = Instant::now();
            let mut now = origin;
            let mut restarts_at = Vec::new();
            for run in &runs {
                tr.started(now);
                now += ms(run.ran);
                match tr.exited(run.exit, now) {
                    Decision::Restart { after } => {
                        now += after;
                        restarts_at.push(now);
                    }
                    Decision::GiveUp(_) => break,
                }
            }
            let period = policy.intensity.period;
            for (i, &end) in restarts_at.iter().enumerate() {
                let inside = restarts_at[..=i].iter().filter(|&&t| t + period > end).count();
                prop_assert!(inside <= policy.intensity.max_restarts as usize,
                    "{inside} restarts in the window ending at restart {i}");
            }
            prop_assert_eq!(tr.restarts() as usize, restarts_at.len());
        }

        #[test]
        fn backoff_grows_in_a_crash_loop_and_resets_after_a_stable_run(
            policy in arb_policy(), runs in arb_runs(), seed: u64,
        ) {
            let mut tr = RestartTracker::new(policy, seed);
            let b = policy.backoff;
            let ceiling_after_reset = b.initial.as_secs_f64() * (1.0 + b.jitter);
            let mut now = Instant::now();
            let mut previous: Option<Duration> = None;
            for run in &runs {
                tr.started(now);
                now += ms(run.ran);
                let stable = ms(run.ran) >= b.reset_after;
                match tr.exited(run.exit, now) {
                    Decision::Restart { after } => {
                        prop_assert!(after <= b.max);
                        if stable {
                            prop_assert!(after.as_secs_f64() <= ceiling_after_reset + 1e-6,
                                "{after:?} after a stable run");
                        } else if let Some(p) = previous {
                            prop_assert!(after >= p, "{after:?} shorter than {p:?} within a crash loop");
                        }
                        previous = Some(after);
                        now += after;
                    }
                    Decision::GiveUp(_) => break,
                }
            }
        }

        #[test]
        fn temporary_never_restarts_and_transient_never_after_a_clean_exit(
            policy in arb_policy(), runs in arb_runs(), seed: u64,
        ) {
            let mut tr = RestartTracker::new(policy, seed);
            let mut now = Instant::now();
            for run in &runs {
                tr.started(now);
                now += ms(run.ran);
                let d = tr.exited(run.exit, now);
                let restarted = matches!(d, Decision::Restart { .. });
                if policy.restart == Restart::Temporary || (policy.restart == Restart::Transient && run.exit.is_normal()) {
                    prop_assert!(!restarted);
                    prop_assert!(matches!(d, Decision::GiveUp(r) if !r.is_failure() || tr.has_failed()));
                }
                if let Decision::Restart { after } = d { now += after; }
            }
        }

        #[test]
        fn jitter_is_deterministic(policy in arb_policy(), runs in arb_runs(), seed: u64) {
            let mut a = RestartTracker::new(policy, seed);
            let mut b = RestartTracker::new(policy, seed);
            let now = Instant::now();
            for (i, run) in runs.iter().enumerate() {
                let at = now + ms(i as u64 * 10_000);
                a.started(at);
                b.started(at);
                prop_assert_eq!(a.exited(run.exit, at + ms(run.ran)), b.exited(run.exit, at + ms(run.ran)));
            }
        }
    }
}
