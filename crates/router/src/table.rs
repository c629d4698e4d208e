//! The route table as the request path reads it: a map from normalised host to that host's
//! routes, longest prefix first, each with its backends and the app's metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use enjin_model::api::RouteTable;

use crate::balance::BackendState;
use crate::metrics::AppMetrics;

/// A table compiled for matching. Immutable; a new one replaces it whole.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// `None` until the first table is applied.
    pub version: Option<i64>,
    pub hosts: HashMap<Box<str>, Vec<Arc<Route>>>,
}

#[derive(Debug)]
pub(crate) struct Route {
    /// Normalised: starts with `/`, and ends with one only if it is `/`.
    pub prefix: Box<str>,
    pub app: Arc<AppMetrics>,
    pub backends: Box<[Backend]>,
}

#[derive(Debug)]
pub(crate) struct Backend {
    pub addr: std::net::SocketAddr,
    /// Shared by every table that names this address, so outstanding counts, ejection and
    /// idle connections survive a table swap.
    pub state: Arc<BackendState>,
}

impl Table {
    /// Compiles `table`, taking each app's metrics and each backend's state from the callbacks
    /// (which keep them across tables). A host/prefix pair that two routes claim goes to the
    /// first; the rest are returned as conflicts for the caller to log.
    pub fn compile(
        table: RouteTable,
        mut app: impl FnMut(&str) -> Arc<AppMetrics>,
        mut backend: impl FnMut(std::net::SocketAddr) -> Arc<BackendState>,
    ) -> (Table, Vec<String>) {
        let mut hosts: HashMap<Box<str>, Vec<Arc<Route>>> = HashMap::new();
        let mut conflicts = Vec::new();
        for entry in table.routes {
            let backends =
                entry.backends.iter().map(|b| Backend { addr: b.addr, state: backend(b.addr) }).collect();
            let route = Arc::new(Route {
                prefix: normalize_prefix(&entry.path_prefix),
                app: app(&entry.app),
                backends,
            });
            for host in &entry.hosts {
                let host: Box<str> = normalize_host(host).into();
                let routes = hosts.entry(host.clone()).or_default();
                if routes.iter().any(|r| r.prefix == route.prefix) {
                    conflicts.push(format!("{host}{}", route.prefix));
                    continue;
                }
                routes.push(route.clone());
            }
        }
        for routes in hosts.values_mut() {
            // Longest first, so the first match is the longest; "/" (length 1) is last.
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        }
        (Table { version: Some(table.version), hosts }, conflicts)
    }

    /// The route for a normalised host and a request path.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.hosts.get(host)?.iter().find(|r| prefix_matches(&r.prefix, path))
    }
}

/// `host` without a port, lowercased; borrowed when it already is. IPv6 literals keep their
/// brackets (`[::1]:80` → `[::1]`).
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let bare = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.find(':') {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    if bare.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(bare.to_ascii_lowercase())
    } else {
        Cow::Borrowed(bare)
    }
}

/// Leading `/` added, trailing `/` dropped, so that matching only has to look at one boundary.
fn normalize_prefix(prefix: &str) -> Box<str> {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else if trimmed.starts_with('/') {
        trimmed.into()
    } else {
        format!("/{trimmed}").into()
    }
}

/// Whether a normalised prefix matches `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enjin_model::api::{RouteBackend, RouteEntry};

    fn entry(app: &str, hosts: &[&str], prefix: &str) -> RouteEntry {
        RouteEntry {
            app: app.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: prefix.into(),
            backends: vec![RouteBackend {
                instance: Default::default(),
                label: "i".into(),
                addr: "127.0.0.1:1".parse().expect("a socket address"),
            }],
        }
    }

    fn compile(routes: Vec<RouteEntry>) -> (Table, Vec<String>) {
        Table::compile(
            RouteTable { version: 7, routes },
            |name| Arc::new(AppMetrics::new(name)),
            |_| Arc::new(BackendState::default()),
        )
    }

    fn app_of<'a>(t: &'a Table, host: &str, path: &str) -> Option<&'a str> {
        t.route(&normalize_host(host), path).map(|r| r.app.name())
    }

    #[test]
    fn hosts_match_exactly_without_port_and_case() {
        let (t, _) = compile(vec![entry("a", &["A.example"], "/"), entry("b", &["b.example:8080"], "/")]);
        assert_eq!(app_of(&t, "a.example", "/"), Some("a"));
        assert_eq!(app_of(&t, "A.EXAMPLE:443", "/x"), Some("a"));
        assert_eq!(app_of(&t, "b.example", "/"), Some("b"));
        assert_eq!(app_of(&t, "x.a.example", "/"), None);
        assert_eq!(app_of(&t, "example", "/"), None);
        assert_eq!(t.version, Some(7));
    }

    #[test]
    fn longest_prefix_on_a_segment_boundary_wins() {
        let (t, _) = compile(vec![
            entry("root", &["h"], "/"),
            entry("api", &["h"], "/api"),
            entry("v2", &["h"], "/api/v2/"),
        ]);
        assert_eq!(app_of(&t, "h", "/"), Some("root"));
        assert_eq!(app_of(&t, "h", "/apix"), Some("root"));
        assert_eq!(app_of(&t, "h", "/api"), Some("api"));
        assert_eq!(app_of(&t, "h", "/api/"), Some("api"));
        assert_eq!(app_of(&t, "h", "/api/v1/x"), Some("api"));
        assert_eq!(app_of(&t, "h", "/api/v2"), Some("v2"));
        assert_eq!(app_of(&t, "h", "/api/v2/users"), Some("v2"));
        assert_eq!(app_of(&t, "h", "/api/v22"), Some("api"));
    }

    #[test]
    fn no_root_route_means_no_match_outside_the_prefixes() {
        let (t, _) = compile(vec![entry("api", &["h"], "api")]);
        assert_eq!(app_of(&t, "h", "/api/x"), Some("api"));
        assert_eq!(app_of(&t, "h", "/"), None);
        assert_eq!(app_of(&t, "h", "*"), None);
    }

    #[test]
    fn a_claimed_host_and_prefix_stays_with_the_first_route() {
        let (t, conflicts) = compile(vec![entry("a", &["h"], "/x"), entry("b", &["h", "g"], "/x/")]);
        assert_eq!(app_of(&t, "h", "/x"), Some("a"));
        assert_eq!(app_of(&t, "g", "/x"), Some("b"));
        assert_eq!(conflicts, vec!["h/x".to_string()]);
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("Example.COM:80"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1"), "[::1");
        assert_eq!(normalize_host(""), "");
        assert!(matches!(normalize_host("plain"), Cow::Borrowed(_)));
    }

    proptest::proptest! {
        #[test]
        fn matching_never_panics(host in "\\PC*", path in "\\PC*", prefix in "\\PC*") {
            let (t, _) = compile(vec![entry("a", &[&host], &prefix)]);
            let _ = t.route(&normalize_host(&host), &path);
            let _ = prefix_matches(&normalize_prefix(&prefix), &path);
        }

        #[test]
        fn a_matching_prefix_is_a_prefix(path in "/[a-z/]{0,12}", prefix in "/[a-z/]{0,6}") {
            let p = normalize_prefix(&prefix);
            if prefix_matches(&p, &path) {
                proptest::prop_assert!(path.starts_with(&*p));
            }
        }
    }
}
