//! `enjin access-rule create|list|effective|get|update|delete`: access rules by app and
//! process names, as a person says them (`--from web --to db:main --port 5432`).

use anyhow::{Result, anyhow, bail};
use enjin_client::{Client, ClientError};
use enjin_model::api::{CreateRequest, EffectiveRules, ListQuery};
use enjin_model::kinds::{AccessRuleSetSpec, AccessRuleSpec, Action, AppSelector, Cidr, Direction, Protocol};
use enjin_model::{Kind, Object, Ring};
use uuid::Uuid;

use super::client;
use super::objects::{self, resolve};
use crate::args::{
    AccessRuleCommand, AccessRuleCreateArgs, CreateArgs, Global, ObjectCommand, Output, RuleProtocol,
};
use crate::output;

/// The instance network's label, and the rule set the CLI uses by default.
const INSTANCE_NETWORK: &str = "instances";
use enjin_control::platform::network::DEFAULT_RULE_SET;

pub async fn run(g: &Global, cmd: AccessRuleCommand) -> Result<()> {
    let kind = Kind::AccessRule;
    match cmd {
        AccessRuleCommand::Create(a) if a.from.is_none() && a.to.is_none() && a.port.is_none() => {
            let generic = CreateArgs { label: a.label, ring: a.ring, account: a.account, content: a.content };
            objects::run(g, kind, ObjectCommand::Create(generic)).await
        }
        AccessRuleCommand::Create(a) => create(g, &client(g)?, a).await,
        AccessRuleCommand::List(a) => list(g, &client(g)?, a).await,
        AccessRuleCommand::Effective { instance } => effective(g, &client(g)?, &instance).await,
        AccessRuleCommand::Get { id } => objects::run(g, kind, ObjectCommand::Get { id }).await,
        AccessRuleCommand::Update(a) => objects::run(g, kind, ObjectCommand::Update(a)).await,
        AccessRuleCommand::Delete { id, revision } => {
            objects::run(g, kind, ObjectCommand::Delete { id, revision }).await
        }
    }
}

/// One end of a rule as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    App(AppSelector),
    Range(Cidr),
}

/// `APP`, `APP:PROCESS`, `10.0.0.0/8` or one address (`10.1.2.3`, a /32).
pub fn parse_end(flag: &str, s: &str) -> Result<End> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(End::Range(Cidr { addr: ip, prefix }));
    }
    if s.contains('/') {
        return s.parse::<Cidr>().map(End::Range).map_err(|e| anyhow!("{flag}: {e}"));
    }
    s.parse::<AppSelector>().map(End::App).map_err(|e| {
        anyhow!("{flag}: {s:?} is neither an app (APP or APP:PROCESS) nor an address range: {e}")
    })
}

/// The rule a person's `--from`/`--to` mean, and which flag each spec field came from.
pub fn rule_from(
    from: &End,
    to: &End,
    rule_set: Uuid,
    a: &AccessRuleCreateArgs,
) -> Result<(AccessRuleSpec, [(&'static str, &'static str); 3])> {
    let (direction, target, peer, fields) = match (from, to) {
        (_, End::App(t)) => (
            Direction::Ingress,
            t.clone(),
            from.clone(),
            [("spec.target", "--to"), ("spec.peer_app", "--from"), ("spec.peer", "--from")],
        ),
        (End::App(t), End::Range(_)) => (
            Direction::Egress,
            t.clone(),
            to.clone(),
            [("spec.target", "--from"), ("spec.peer_app", "--to"), ("spec.peer", "--to")],
        ),
        (End::Range(_), End::Range(_)) => bail!(
            "--from: a rule is for an app's instances: give an app (APP or APP:PROCESS) as --to \
             (connections to it) or as --from (connections from it to the --to range)"
        ),
    };
    let (peer, peer_app) = match peer {
        End::App(s) => (None, Some(s)),
        End::Range(c) => (Some(c), None),
    };
    let spec = AccessRuleSpec {
        rule_set,
        action: if a.deny { Action::Deny } else { Action::Allow },
        direction,
        protocol: match a.protocol {
            RuleProtocol::Tcp => Protocol::Tcp,
            RuleProtocol::Udp => Protocol::Udp,
        },
        ports: a.port,
        peer,
        peer_app,
        target: Some(target),
        priority: a.priority.unwrap_or(1000),
    };
    Ok((spec, fields))
}

async fn create(g: &Global, c: &Client, a: AccessRuleCreateArgs) -> Result<()> {
    let label = a.label.clone().ok_or_else(|| anyhow!("NAME: a rule needs a name"))?;
    let from = parse_end("--from", a.from.as_deref().ok_or_else(|| anyhow!("--from: missing"))?)?;
    let to = parse_end("--to", a.to.as_deref().ok_or_else(|| anyhow!("--to: missing"))?)?;
    if a.port.is_none() {
        bail!("--port: give the destination port or range (N or N-M)");
    }
    if !a.content.set.is_empty() || a.content.file.is_some() {
        bail!("--set and --file go with the generic create, without --from, --to and --port");
    }
    let account = match &a.account {
        Some(id) => Some(resolve(c, Kind::Account, id).await?),
        None => None,
    };
    let rule_set = match &a.rule_set {
        Some(id) => resolve(c, Kind::AccessRuleSet, id).await?,
        None => default_rule_set(c, account).await?,
    };
    let (spec, fields) = rule_from(&from, &to, rule_set, &a)?;
    let req =
        CreateRequest { account, ring: Ring::PLATFORM, label: Some(label), labels: Default::default(), spec };
    let obj = c.create(&req).await.map_err(|e| with_flag(e, &fields))?;
    match g.output {
        Output::Json => output::json(&obj),
        Output::Table => {
            let (f, t) = ends(&obj.spec);
            println!(
                "created access rule {} ({}): {} {f} → {t} {}",
                obj.meta.label.as_deref().unwrap_or("-"),
                obj.meta.uuid,
                action(obj.spec.action),
                ports(&obj.spec)
            );
        }
    }
    Ok(())
}

/// A refusal that names a spec field, said with the flag the person typed.
fn with_flag(e: ClientError, fields: &[(&str, &str)]) -> anyhow::Error {
    if let ClientError::Api(p) = &e
        && let Some(field) = &p.field
    {
        let flag = match field.as_str() {
            "spec.ports" => Some("--port"),
            "spec.priority" => Some("--priority"),
            f => fields.iter().find(|(name, _)| *name == f).map(|(_, flag)| *flag),
        };
        if let Some(flag) = flag {
            return anyhow!("{flag}: {}", p.detail.clone().unwrap_or_else(|| p.title.clone()));
        }
    }
    e.into()
}

/// The account's rule set labelled `default` on the instance network, made when missing.
async fn default_rule_set(c: &Client, account: Option<Uuid>) -> Result<Uuid> {
    let q = ListQuery { label: Some(DEFAULT_RULE_SET.into()), account, ..ListQuery::default() };
    let sets = c.list::<AccessRuleSetSpec>(&q).await?;
    let networks = c
        .list::<enjin_model::kinds::NetworkSpec>(&ListQuery {
            label: Some(INSTANCE_NETWORK.into()),
            ring: Some(Ring::PLATFORM),
            ..ListQuery::default()
        })
        .await?;
    let network = networks.items.first().map(|n| n.meta.uuid);
    // Without sight of the network (a tenant may not read the operator's), any default set
    // of the account's is taken to be on it.
    if let Some(s) = sets.items.iter().find(|s| network.is_none_or(|n| s.spec.network == n)) {
        return Ok(s.meta.uuid);
    }
    let Some(network) = network else {
        bail!(
            "--rule-set: there is no network labelled {INSTANCE_NETWORK:?} you can see to make the \
             default rule set on; name a rule set with --rule-set"
        )
    };
    let req = CreateRequest {
        account,
        ring: Ring::PLATFORM,
        label: Some(DEFAULT_RULE_SET.into()),
        labels: Default::default(),
        spec: AccessRuleSetSpec { network, description: "made by enjin access-rule create".into() },
    };
    Ok(c.create(&req).await?.meta.uuid)
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

fn peer_text(r: &AccessRuleSpec) -> String {
    match (&r.peer, &r.peer_app) {
        (Some(c), _) => c.to_string(),
        (None, Some(a)) => a.to_string(),
        (None, None) => "anywhere".into(),
    }
}

/// FROM and TO of a rule, as `create` takes them.
pub fn ends(r: &AccessRuleSpec) -> (String, String) {
    let target = r.target.as_ref().map_or_else(|| "(every app)".to_string(), ToString::to_string);
    match r.direction {
        Direction::Ingress => (peer_text(r), target),
        Direction::Egress => (target, peer_text(r)),
    }
}

pub fn ports(r: &AccessRuleSpec) -> String {
    let proto = match r.protocol {
        Protocol::Any => "any",
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    };
    match &r.ports {
        Some(p) => format!("{proto}/{p}"),
        None => proto.to_string(),
    }
}

async fn list(g: &Global, c: &Client, a: crate::args::ListArgs) -> Result<()> {
    let q = ListQuery {
        account: match &a.account {
            Some(id) => Some(resolve(c, Kind::Account, id).await?),
            None => None,
        },
        ring: a.ring,
        label: a.label,
        selector: a.selector,
        ..ListQuery::default()
    };
    let list = c.list::<AccessRuleSpec>(&q).await?;
    match g.output {
        Output::Json => output::json(&list),
        Output::Table => {
            let mut items: Vec<&Object<AccessRuleSpec>> = list.items.iter().collect();
            items.sort_by_key(|r| (r.spec.priority, r.spec.action == Action::Allow, r.meta.label.clone()));
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    let (f, t) = ends(&r.spec);
                    vec![
                        r.meta.label.clone().unwrap_or_else(|| r.meta.uuid.to_string()),
                        f,
                        t,
                        ports(&r.spec),
                        action(r.spec.action).into(),
                        r.spec.priority.to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("no access rules");
            } else {
                output::table(&["NAME", "FROM", "TO", "PORTS", "ACTION", "PRIORITY"], &rows);
            }
        }
    }
    Ok(())
}

async fn effective(g: &Global, c: &Client, instance: &str) -> Result<()> {
    let node = resolve(c, Kind::Node, instance).await?;
    let e = c.effective_rules(node).await?;
    match g.output {
        Output::Json => output::json(&e),
        Output::Table => print!("{}", describe(&e)),
    }
    Ok(())
}

/// An instance's effective rules as text: the defaults, then each list in order.
pub fn describe(e: &EffectiveRules) -> String {
    let mut out = format!("instance {} ({}:{}) at {}\n", e.node, e.app, e.process, e.address);
    out.push_str(&match e.port {
        Some(p) => format!("  the edge (router) may connect to tcp/{p}\n"),
        None => "  the edge (router) reaches no port\n".into(),
    });
    let section =
        |out: &mut String, title: &str, dir: &str, rules: &[enjin_model::api::EffectiveRule], rest: &str| {
            out.push_str(&format!("{title} (first match wins):\n"));
            for r in rules {
                let proto = ports(&AccessRuleSpec {
                    rule_set: Uuid::nil(),
                    action: r.action,
                    direction: Direction::Ingress,
                    protocol: r.protocol,
                    ports: r.ports,
                    peer: None,
                    peer_app: None,
                    target: None,
                    priority: r.priority,
                });
                // An app's addresses, resolved now; a range or "anywhere" already says itself.
                let addrs: Vec<String> = r.peers.iter().map(ToString::to_string).collect();
                let addrs = if addrs.is_empty() || addrs == [r.peer.clone()] {
                    String::new()
                } else {
                    format!(" = {}", addrs.join(", "))
                };
                out.push_str(&format!(
                    "  {:>5}  {:<5} {dir} {}{addrs}  {proto}  ({})\n",
                    r.priority,
                    action(r.action),
                    r.peer,
                    r.label.clone().unwrap_or_else(|| r.rule.to_string())
                ));
            }
            out.push_str(&format!("         {rest}\n"));
        };
    section(&mut out, "ingress", "from", &e.ingress, "deny everything else");
    section(
        &mut out,
        "egress",
        "to",
        &e.egress,
        "deny everything else outside the instance network (other instances: their ingress decides; \
         never the host or ring 0/1, but DNS)",
    );
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn create_args(args: &[&str]) -> AccessRuleCreateArgs {
        let mut argv = vec!["enjin", "access-rule", "create"];
        argv.extend(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::AccessRule(AccessRuleCommand::Create(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn ends_of(a: &AccessRuleCreateArgs) -> (End, End) {
        (
            parse_end("--from", a.from.as_deref().expect("from")).expect("from"),
            parse_end("--to", a.to.as_deref().expect("to")).expect("to"),
        )
    }

    #[test]
    fn to_an_app_is_an_ingress_rule_for_it_from_the_other_end() {
        let a = create_args(&["db-from-web", "--from", "web", "--to", "db:main", "--port", "5432"]);
        let (from, to) = ends_of(&a);
        let (spec, _) = rule_from(&from, &to, Uuid::nil(), &a).expect("rule");
        assert_eq!(spec.direction, Direction::Ingress);
        assert_eq!(spec.target, Some("db:main".parse().expect("selector")));
        assert_eq!(spec.peer_app, Some("web".parse().expect("selector")));
        assert_eq!((spec.peer, spec.action, spec.protocol), (None, Action::Allow, Protocol::Tcp));
        assert_eq!(ends(&spec), ("web".into(), "db:main".into()));
        assert_eq!(ports(&spec), "tcp/5432");
    }

    #[test]
    fn to_a_range_is_an_egress_rule_of_the_from_app() {
        let a = create_args(&[
            "out",
            "--from",
            "web:worker",
            "--to",
            "192.0.2.0/24",
            "--port",
            "443-444",
            "--deny",
            "--protocol",
            "udp",
            "--priority",
            "7",
        ]);
        let (from, to) = ends_of(&a);
        let (spec, fields) = rule_from(&from, &to, Uuid::nil(), &a).expect("rule");
        assert_eq!(spec.direction, Direction::Egress);
        assert_eq!(spec.target, Some("web:worker".parse().expect("selector")));
        assert_eq!(spec.peer, Some("192.0.2.0/24".parse().expect("cidr")));
        assert_eq!((spec.action, spec.protocol, spec.priority), (Action::Deny, Protocol::Udp, 7));
        assert!(fields.contains(&("spec.target", "--from")), "an unknown app is blamed on --from");
        // One address is a /32.
        assert_eq!(
            parse_end("--to", "10.1.2.3").expect("ip"),
            End::Range("10.1.2.3/32".parse().expect("cidr"))
        );
    }

    #[test]
    fn bad_input_is_refused_naming_the_flag() {
        for port in ["0", "9-1", "70000", "http"] {
            let argv = ["enjin", "access-rule", "create", "x", "--from", "a", "--to", "b", "--port", port];
            let e = Cli::try_parse_from(argv).expect_err(port).to_string();
            assert!(e.contains("--port"), "{port}: {e}");
        }
        let e = parse_end("--from", "Web App").expect_err("bad").to_string();
        assert!(e.starts_with("--from:"), "{e}");
        let e = parse_end("--to", "10.0.0.1/8").expect_err("host bits").to_string();
        assert!(e.starts_with("--to:") && e.contains("host bits"), "{e}");
        let a = create_args(&["x", "--from", "10.0.0.0/8", "--to", "192.0.2.0/24", "--port", "1"]);
        let (from, to) = ends_of(&a);
        let e = rule_from(&from, &to, Uuid::nil(), &a).expect_err("two ranges").to_string();
        assert!(e.starts_with("--from:"), "{e}");
    }

    #[test]
    fn server_refusals_are_said_with_the_flag() {
        let problem = |field: &str| {
            ClientError::Api(Box::new(enjin_model::api::Problem {
                problem_type: "about:blank".into(),
                title: "invalid".into(),
                status: 422,
                detail: Some("there is no app nope in account x".into()),
                instance: None,
                field: Some(field.into()),
            }))
        };
        let fields = [("spec.target", "--to"), ("spec.peer_app", "--from"), ("spec.peer", "--from")];
        assert_eq!(
            with_flag(problem("spec.target"), &fields).to_string(),
            "--to: there is no app nope in account x"
        );
        assert!(with_flag(problem("spec.priority"), &fields).to_string().starts_with("--priority:"));
        assert!(with_flag(problem("label"), &fields).to_string().contains("there is no app"));
    }

    #[test]
    fn the_generic_object_commands_still_parse() {
        let cli = Cli::try_parse_from(["enjin", "access-rule", "create", "r", "--set", "action=allow"])
            .expect("generic");
        assert!(
            matches!(cli.command, Command::AccessRule(AccessRuleCommand::Create(ref a)) if a.from.is_none() && a.content.set.len() == 1)
        );
        for argv in [
            vec!["enjin", "access-rule", "get", "r"],
            vec!["enjin", "access-rule", "ls"],
            vec!["enjin", "access-rule", "rm", "r"],
            vec!["enjin", "access-rule", "update", "r", "--set", "priority=5"],
            vec!["enjin", "access-rule", "effective", "web-1"],
        ] {
            Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn effective_rules_read_in_order_with_the_defaults() {
        let e = EffectiveRules {
            node: Uuid::nil(),
            account: Uuid::nil(),
            app: "db".into(),
            process: "main".into(),
            address: "10.251.0.5".parse().expect("ip"),
            port: Some(8000),
            ingress: vec![enjin_model::api::EffectiveRule {
                rule: Uuid::nil(),
                label: Some("db-from-web".into()),
                action: Action::Allow,
                protocol: Protocol::Tcp,
                ports: Some("5432".parse().expect("ports")),
                priority: 1000,
                peer: "web".into(),
                peers: vec!["10.251.0.7/32".parse().expect("cidr")],
            }],
            egress: vec![],
        };
        let text = describe(&e);
        assert!(text.contains("tcp/8000"), "{text}");
        assert!(text.contains("allow from web = 10.251.0.7/32  tcp/5432  (db-from-web)"), "{text}");
        assert!(text.contains("deny everything else\n"), "{text}");
        let mut range = e.clone();
        range.ingress[0].peer = "10.251.0.7/32".into();
        let text = describe(&range);
        assert!(text.contains("allow from 10.251.0.7/32  tcp/5432"), "a range is not repeated: {text}");
    }
}
