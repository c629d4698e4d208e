//! The host's side of instance networks: the namespace's routing settings and the firewall
//! its parent computed, applied before each desired set.

use enjin_model::api::HostFirewall;

/// Make this host route for its instances and hold `firewall`.
pub fn apply(firewall: &HostFirewall) -> Result<(), enjin_net::NetError> {
    enjin_net::instance::prepare_host()?;
    enjin_net::firewall::apply(firewall)
}
