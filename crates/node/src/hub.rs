//! The ring 1 hub `enjin up` hosts as the ring's parent, listening where the last run did when
//! it can: the agents this run adopts know only that address.

use std::net::SocketAddr;
use std::path::Path;

use enjin_bus::hub::{Hub, HubConfig};
use enjin_control::bus::BusAuthority;

use crate::NodeError;
use crate::layout::HUB_ADDR_FILE;

/// Bind the hub on `listen` (or, asked for any port, on the last run's address when it is
/// free), admitting members as `authority` says, and record where it listens.
pub(crate) async fn bind(dir: &Path, listen: SocketAddr, authority: &BusAuthority) -> Result<Hub, NodeError> {
    let sans = vec!["localhost".to_string(), listen.ip().to_string()];
    let hub_tls = authority
        .local_tls("hub", &sans)
        .map_err(|source| NodeError::Bus { what: "failed to make the hub's certificate", source })?;
    let hub_config =
        HubConfig { retained_dir: Some(dir.join("bus").join("retained")), ..HubConfig::default() };
    let bus_dir = dir.join("bus");
    std::fs::create_dir_all(&bus_dir).map_err(|source| NodeError::Io {
        action: "create",
        path: bus_dir.clone(),
        source,
    })?;
    let last = bus_dir.join(HUB_ADDR_FILE);
    let again = std::fs::read_to_string(&last)
        .ok()
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
        .filter(|a| listen.port() == 0 && a.ip() == listen.ip());
    let bound = match again {
        Some(a) => match Hub::bind(a, &hub_tls, hub_config.clone()).await {
            Ok(hub) => Ok(hub),
            Err(e) => {
                tracing::warn!(addr = %a, error = %e, "the hub's last address is taken; running agents must be restarted to find the new one");
                Hub::bind(listen, &hub_tls, hub_config).await
            }
        },
        None => Hub::bind(listen, &hub_tls, hub_config).await,
    };
    let hub = bound
        .map_err(|source| NodeError::Hub { addr: listen, source })?
        .with_filter(authority.hub_filter())
        .with_admission(authority.hub_admission());
    let addr = hub.local_addr();
    enjin_sys::fs::write_private(&last, addr.to_string().as_bytes()).map_err(|source| NodeError::Io {
        action: "write",
        path: last,
        source,
    })?;
    Ok(hub)
}
