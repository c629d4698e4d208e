//! Quotas per account: apps, ring 2 instances, their memory and disk limits added up, and the
//! bytes of the packages the account uploaded. A change is checked against the use it would
//! leave behind, counted as a steady state: a rollout's surge (old and new instances side by
//! side for a moment) is not counted, so a deploy that fits never fails halfway. An instance
//! without a memory or disk limit counts as unbounded where the account has that quota.

use enjin_model::api::{AccountUsage, ListQuery};
use enjin_model::kinds::{
    AccountSpec, AppManifest, CompartmentSpec, CompartmentType, NodeSpec, Quota, ReleaseSpec, Resources,
    TaskKind, TaskSpec,
};
use enjin_model::{Object, Ring};
use uuid::Uuid;

use crate::registry::{Guard, Registry, RegistryError};

/// Where each account's quota guard lives (`<prefix><account>`). Every change checked against a
/// quota is committed only if the guard is where the check read it, and moves it: two checks of
/// one account can never both pass on the same reading.
const GUARDS_PREFIX: &str = "/quota/guards/";

/// Read `account`'s quota guard; read it before anything the check reads.
pub async fn guard(registry: &Registry, account: Uuid) -> Result<Guard, RegistryError> {
    let what = format!("the use of account {account} (another change in the account)");
    Guard::read(registry.store().as_ref(), format!("{GUARDS_PREFIX}{account}"), what).await
}

/// What `m`'s instances take, with the cloud's default limits filled in.
pub fn footprint_of_manifest(registry: &Registry, m: &AppManifest) -> Footprint {
    let defaults = registry.instance_defaults();
    m.processes.values().fold(Footprint::default(), |f, pt| {
        f.plus(Footprint::instances(pt.instances, &defaults.applied(&pt.resources)))
    })
}

/// The account's instances once its rollouts under way have ended, leaving out app `except`:
/// an app with a rollout running counts at its release's counts (a rollout makes its
/// instances one by one), every other instance as it is. Tasks are read before instances, so a
/// rollout that ends in between is counted at its counts, never below.
pub async fn settled_instances(
    registry: &Registry,
    account: Uuid,
    except: Option<&str>,
) -> Result<Footprint, RegistryError> {
    let app_of =
        |labels: &std::collections::BTreeMap<String, String>| labels.get(crate::platform::APP_LABEL).cloned();
    let q = ListQuery { account: Some(account), ..ListQuery::default() };
    let mut rolling: std::collections::BTreeMap<String, Footprint> = std::collections::BTreeMap::new();
    for t in registry.list::<TaskSpec>(&q).await?.0 {
        let Some(app) = app_of(&t.meta.labels) else { continue };
        if t.spec.task_type != TaskKind::Deploy || t.spec.state.is_final() {
            continue;
        }
        let Some(release) = t.spec.subject else { continue };
        let Ok(release) = registry.get::<ReleaseSpec>(release).await else { continue };
        rolling.insert(app, footprint_of_manifest(registry, &release.spec.manifest));
    }
    let q = ListQuery { account: Some(account), ring: Some(Ring::PLATFORM), ..ListQuery::default() };
    let (nodes, _) = registry.list::<NodeSpec>(&q).await?;
    let mut total = Footprint::default();
    for n in &nodes {
        if let Some(app) = app_of(&n.meta.labels)
            && (Some(app.as_str()) == except || rolling.contains_key(&app))
        {
            continue;
        }
        total = total.plus(Footprint::instances(1, &n.spec.resources));
    }
    for (app, target) in rolling {
        if Some(app.as_str()) != except {
            total = total.plus(target);
        }
    }
    Ok(total)
}

/// A change refused by a quota: which, its limit, and the use the change would reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "account {account}: quota {quota} is {limit}{unit}; this would use {wanted}{unit} (in use now: {now}{unit})"
)]
pub struct QuotaExceeded {
    /// The account's label.
    pub account: String,
    /// The quota's field in `AccountSpec.quota` (`instances`, `memory_bytes`, …).
    pub quota: &'static str,
    /// The quota's value.
    pub limit: u64,
    /// The use the change would leave behind.
    pub wanted: u64,
    /// The use before the change. A change that lowers use is never refused, even past the
    /// limit (a quota lowered below what runs does not stop a scale-down).
    pub now: u64,
    /// `" bytes"` for the byte quotas, empty for counts: what the message appends to numbers.
    pub unit: &'static str,
}

/// The instances a change adds to an account (and any it removes, as a negative part).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Apps (app environments).
    pub apps: u64,
    /// Ring 2 instances.
    pub instances: u64,
    /// The instances' memory limits added up; `u64::MAX` once any has none.
    pub memory_bytes: u64,
    /// The instances' disk limits added up; `u64::MAX` once any has none.
    pub disk_bytes: u64,
    /// Bytes of uploaded packages.
    pub package_bytes: u64,
}

impl Footprint {
    /// `count` instances with these (default-filled) limits; no limit counts as unbounded.
    pub fn instances(count: u32, r: &Resources) -> Footprint {
        let n = u64::from(count);
        Footprint {
            instances: n,
            memory_bytes: r.memory_bytes.unwrap_or(u64::MAX).saturating_mul(n),
            disk_bytes: r.disk_bytes.unwrap_or(u64::MAX).saturating_mul(n),
            ..Footprint::default()
        }
    }

    /// Both together, each part saturating (an unbounded part stays unbounded).
    pub fn plus(self, o: Footprint) -> Footprint {
        Footprint {
            apps: self.apps.saturating_add(o.apps),
            instances: self.instances.saturating_add(o.instances),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(o.disk_bytes),
            package_bytes: self.package_bytes.saturating_add(o.package_bytes),
        }
    }

    /// What is left once `o` goes, each part saturating at 0.
    pub fn minus(self, o: Footprint) -> Footprint {
        Footprint {
            apps: self.apps.saturating_sub(o.apps),
            instances: self.instances.saturating_sub(o.instances),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(o.disk_bytes),
            package_bytes: self.package_bytes.saturating_sub(o.package_bytes),
        }
    }

    /// An account's use as [`usage`] reports it.
    pub fn of_usage(u: &AccountUsage) -> Footprint {
        Footprint {
            apps: u64::from(u.apps),
            instances: u64::from(u.instances),
            memory_bytes: u.memory_bytes,
            disk_bytes: u.disk_bytes,
            package_bytes: u.package_bytes,
        }
    }
}

/// The account's quota, or none for an account that does not exist (the registry refuses
/// what refers to it).
pub async fn quota_of(registry: &Registry, account: Uuid) -> Result<Option<(String, Quota)>, RegistryError> {
    match registry.get::<AccountSpec>(account).await {
        Ok(a) => Ok(Some((a.meta.label.unwrap_or_else(|| account.to_string()), a.spec.quota))),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the account's objects use now; `package_bytes` is the caller's to fill (the package
/// owners are the platform's).
pub async fn usage(registry: &Registry, account: Uuid) -> Result<AccountUsage, RegistryError> {
    let q = ListQuery { account: Some(account), ring: Some(Ring::PLATFORM), ..ListQuery::default() };
    let (envs, _) = registry.list::<CompartmentSpec>(&q).await?;
    let (nodes, _) = registry.list::<NodeSpec>(&q).await?;
    let apps = envs.iter().filter(|c| c.spec.compartment_type == CompartmentType::AppEnvironment).count();
    let used = footprint_of(&nodes);
    Ok(AccountUsage {
        apps: u32::try_from(apps).unwrap_or(u32::MAX),
        instances: u32::try_from(used.instances).unwrap_or(u32::MAX),
        memory_bytes: used.memory_bytes,
        disk_bytes: used.disk_bytes,
        package_bytes: 0,
    })
}

/// What these instances take together.
pub fn footprint_of<'a>(nodes: impl IntoIterator<Item = &'a Object<NodeSpec>>) -> Footprint {
    nodes.into_iter().fold(Footprint::default(), |f, n| f.plus(Footprint::instances(1, &n.spec.resources)))
}

/// Refuse a change that takes the account from `now` to `after` past a quota. Only limits the
/// change raises are checked: an account already over a lowered quota can still shrink.
pub fn check(label: &str, quota: &Quota, now: &AccountUsage, after: Footprint) -> Result<(), QuotaExceeded> {
    let before = Footprint::of_usage(now);
    let rows: [(&'static str, Option<u64>, u64, u64, &'static str); 5] = [
        ("apps", quota.apps.map(u64::from), before.apps, after.apps, ""),
        ("instances", quota.instances.map(u64::from), before.instances, after.instances, ""),
        ("memory_bytes", quota.memory_bytes, before.memory_bytes, after.memory_bytes, " bytes"),
        ("disk_bytes", quota.disk_bytes, before.disk_bytes, after.disk_bytes, " bytes"),
        ("package_bytes", quota.package_bytes, before.package_bytes, after.package_bytes, " bytes"),
    ];
    for (name, limit, was, wanted, unit) in rows {
        if let Some(limit) = limit
            && wanted > limit
            && wanted > was
        {
            return Err(QuotaExceeded {
                account: label.to_string(),
                quota: name,
                limit,
                wanted,
                now: was,
                unit,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_past_a_quota_is_refused_naming_it() {
        let quota = Quota { instances: Some(3), memory_bytes: Some(1 << 30), ..Quota::default() };
        let now = AccountUsage { instances: 2, memory_bytes: 512 << 20, ..AccountUsage::default() };
        let r =
            Resources { memory_bytes: Some(256 << 20), disk_bytes: Some(1 << 20), ..Resources::default() };
        let after = Footprint::of_usage(&now).plus(Footprint::instances(1, &r));
        assert!(check("t", &quota, &now, after).is_ok());
        let after = Footprint::of_usage(&now).plus(Footprint::instances(2, &r));
        let e = check("t", &quota, &now, after).expect_err("over");
        assert_eq!((e.quota, e.limit, e.wanted, e.now), ("instances", 3, 4, 2));
        assert!(e.to_string().contains("quota instances is 3"), "{e}");
    }

    #[test]
    fn no_limit_counts_as_unbounded_and_shrinking_is_allowed() {
        let quota = Quota { memory_bytes: Some(1 << 30), ..Quota::default() };
        let now = AccountUsage::default();
        let unbounded = Footprint::instances(1, &Resources::default());
        assert!(check("t", &quota, &now, unbounded).is_err());
        let over = AccountUsage { memory_bytes: 4 << 30, ..AccountUsage::default() };
        let less =
            Footprint::of_usage(&over).minus(Footprint { memory_bytes: 1 << 30, ..Footprint::default() });
        assert!(check("t", &quota, &over, less).is_ok());
    }
}
