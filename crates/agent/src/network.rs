//! The host's side of instance networks: the namespace's routing settings, the firewall its
//! parent computed (applied before each desired set), and the eBPF fast path that carries the
//! edge's connections to instances past the host's IP stack (`enjin_net::fastpath`).
//!
//! The fast path follows the firewall: it holds the firewall's instances whose veth exists now,
//! so it is synced again whenever an instance's network is made or removed. Where the kernel
//! cannot load it (no eBPF, no tcx links before Linux 6.6) or the host has no uplink veth, it
//! is off and every packet takes the ordinary path through nftables, which admits the same
//! traffic.

use std::sync::Mutex;

use enjin_model::api::HostFirewall;
use enjin_net::fastpath::FastPath;

/// A host's instance networking: what the last firewall was, and the fast path.
#[derive(Debug, Default)]
pub struct HostNetwork {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    firewall: Option<HostFirewall>,
    fast: Fast,
}

#[derive(Debug, Default)]
enum Fast {
    #[default]
    NotTried,
    /// The kernel or the host cannot have it (said once, in the log).
    Off,
    On(FastPath),
}

impl HostNetwork {
    /// Make this host route for its instances, hold `firewall`, and sync the fast path to it.
    /// Runs on a blocking thread of the host's namespace.
    pub fn apply(&self, firewall: &HostFirewall) -> Result<(), enjin_net::NetError> {
        enjin_net::instance::prepare_host()?;
        enjin_net::firewall::apply(firewall)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.firewall = Some(firewall.clone());
        state.sync();
        Ok(())
    }

    /// Sync the fast path to the last firewall again: an instance's network was made or
    /// removed.
    pub fn resync(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).sync();
    }
}

impl State {
    fn sync(&mut self) {
        let Some(fw) = &self.firewall else { return };
        if matches!(self.fast, Fast::NotTried) {
            self.fast = match FastPath::new() {
                Ok(Some(f)) => {
                    tracing::info!("the edge's fast path to instances is on (eBPF on tc ingress)");
                    Fast::On(f)
                }
                Ok(None) => {
                    tracing::info!("no uplink veth: instances are reached through the host's stack");
                    Fast::Off
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no fast path to instances here; they are reached through the host's stack");
                    Fast::Off
                }
            };
        }
        if let Fast::On(fast) = &mut self.fast {
            match fast.sync(fw) {
                Ok(s) => tracing::debug!(instances = s.instances, left_out = s.skipped, "fast path synced"),
                Err(e) => {
                    tracing::warn!(error = %e, "fast path not synced; new instances take the host's stack")
                }
            }
        }
    }
}
