//! The command line's shape.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use enjin_model::Ring;

/// The whole command line, as the binary parses it from `argv` and hands it to
/// [`run`](crate::run). Its help text comes from the `about` attribute and the fields' types,
/// not from this comment.
#[derive(Debug, Parser)]
#[command(
    name = "enjin",
    version,
    about = "A cloud in one binary: machines, hosts and apps, each ring supervising the next"
)]
pub struct Cli {
    /// The flags every command takes, before or after its name: which server, token, CA,
    /// context and data directory to use, and the output format. Each may also come from its
    /// `ENJIN_*` variable; a flag wins over the variable.
    #[command(flatten)]
    pub global: Global,
    /// The one command to run; exactly one is required.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The API server (default: the current context's, else the one `enjin up` runs from the
    /// data dir, else https://127.0.0.1:7480)
    #[arg(long, global = true, env = "ENJIN_SERVER")]
    pub server: Option<String>,
    /// API token (default: the context's or data dir's that goes with the server)
    #[arg(long, global = true, env = "ENJIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) to check the server's certificate with; the only one trusted
    /// (default: the context's or data dir's that goes with the server)
    #[arg(long, global = true, env = "ENJIN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Use this login context instead of the current one (see `enjin context`)
    #[arg(long, global = true, env = "ENJIN_CONTEXT")]
    pub context: Option<String>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Data directory (default: /var/lib/enjin as root, else $XDG_DATA_HOME/enjin)
    #[arg(long, global = true, env = "ENJIN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole cloud on this machine: the control plane and this machine as the ring 0 node
    Up(ServeArgs),
    /// Stop this data directory's `enjin up` and remove what its cloud made on this machine
    /// (namespaces, bridge, veths, routes, cgroups, firewall tables, loop devices)
    Down(DownArgs),
    /// Run the control plane only
    Server(ServeArgs),
    /// The state store of a stopped cloud: copy it to etcd
    #[command(subcommand)]
    Store(StoreCommand),
    /// The ring 1 bus on a NATS server: what the server needs
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Run a ring agent from the directory its parent prepared (started by the parent), or
    /// join a ring from this machine (`enjin agent join`)
    Agent(AgentArgs),
    /// Ring 1 hosts on other machines
    #[command(subcommand)]
    Host(HostCommand),
    /// Run the ring 1 edge (HTTP router and DNS) from the directory its parent prepared
    /// (started by `enjin up`)
    Edge(EdgeArgs),
    /// Accounts (tenants)
    #[command(subcommand)]
    Account(AccountCommand),
    /// Roles (permission sets)
    #[command(subcommand)]
    Role(ObjectCommand),
    /// Memberships: a principal in an account with a role
    #[command(subcommand)]
    Membership(ObjectCommand),
    /// Networks
    #[command(subcommand)]
    Network(ObjectCommand),
    /// Network interfaces: nodes attached to networks
    #[command(subcommand)]
    NetworkInterface(ObjectCommand),
    /// Access rule sets of a network
    #[command(subcommand)]
    AccessRuleSet(ObjectCommand),
    /// Access rules: who may reach which app's instances, and where they may connect
    #[command(subcommand)]
    AccessRule(AccessRuleCommand),
    /// Compartments: localities forming a DAG
    #[command(subcommand)]
    Compartment(CompartmentCommand),
    /// Tiers: groups or roles nodes serve
    #[command(subcommand)]
    Tier(ObjectCommand),
    /// Nodes: anything supervised
    #[command(subcommand)]
    Node(NodeCommand),
    /// What was observed of nodes
    #[command(subcommand)]
    NodeObservation(ObjectCommand),
    /// Tasks: long operations
    #[command(subcommand)]
    Task(ObjectCommand),
    /// Releases of apps (as objects; `enjin releases APP` lists an app's)
    #[command(subcommand)]
    Release(ObjectCommand),
    /// Deploy an app from a directory with an enjin.toml or a Procfile
    Deploy(DeployArgs),
    /// List apps
    Apps,
    /// One app
    #[command(subcommand)]
    App(AppCommand),
    /// Set how many instances of each process an app runs: `enjin scale APP web=3`
    Scale {
        app: String,
        /// PROCESS=COUNT (repeatable)
        #[arg(required = true)]
        counts: Vec<String>,
    },
    /// Replace every instance of an app, without downtime
    Restart { app: String },
    /// Go back to an earlier release (default: the one before the live one)
    Rollback {
        app: String,
        /// The release, e.g. v2
        version: Option<String>,
    },
    /// An app's releases, newest first
    Releases { app: String },
    /// What an app's instances wrote
    Logs(LogsArgs),
    /// API tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Bus identities (Ed25519 keys): list, rotate, revoke
    #[command(subcommand)]
    Key(KeyCommand),
    /// Single-use tokens for a child that joins its ring from elsewhere
    #[command(subcommand)]
    JoinToken(JoinTokenCommand),
    /// The ring bus
    #[command(subcommand)]
    Bus(BusCommand),
    /// Follow changes as they are committed
    Watch(WatchArgs),
    /// Who changed what: the audit log of authenticated changes, newest first
    Audit(AuditArgs),
    /// Check a server and a token, and keep them (with the server's CA) as a context in
    /// $XDG_CONFIG_HOME/enjin: `enjin login --server https://… --token … --ca FILE`
    Login(LoginArgs),
    /// Login contexts: list, use, current, remove
    #[command(subcommand)]
    Context(ContextCommand),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app's directory
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The app's name (default: from enjin.toml, else the directory's name)
    #[arg(long)]
    pub name: Option<String>,
    /// Start the rollout and return without waiting for it
    #[arg(long)]
    pub no_wait: bool,
    /// The account a new app is made in, by label or uuid (default: your own)
    #[arg(long)]
    pub account: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Its live release, instances (health, host, CPU, memory) and traffic
    Status { app: String },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub app: String,
    /// Keep printing new lines
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines since then: 10m, 2h, 1d, or an RFC 3339 time
    #[arg(long)]
    pub since: Option<String>,
    /// Only this instance (label or uuid)
    #[arg(long)]
    pub instance: Option<String>,
    /// At most this many lines per instance, the newest
    #[arg(long, default_value_t = 200)]
    pub tail: u32,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// The directory its parent prepared (agent.json, edge.json, keys, certificates, bundle)
    #[arg(long)]
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The ring this agent's node is in
    #[arg(long, required = true)]
    pub ring: Option<u8>,
    /// The directory its parent (or `enjin agent join`) prepared (agent.json, keys,
    /// certificates, trust bundle)
    #[arg(long, required = true)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Join ring 1 from this machine as the host a join token was made for (`enjin host add`
    /// prints the command), writing the agent's directory; then run `enjin agent --ring 1
    /// --dir DIR` (the unit in dist/ does)
    Join(AgentJoinArgs),
}

/// `enjin agent join --server https://… --token JOIN-TOKEN --ca FILE`: the server, the
/// single-use join token and the CA the API's certificate must come from (the server's
/// `ca.crt`) are the global flags, all three required.
#[derive(Debug, Args)]
pub struct AgentJoinArgs {
    /// The agent's directory to create
    #[arg(long, default_value = "/var/lib/enjin/agent")]
    pub dir: std::path::PathBuf,
    /// The label of this machine's bus key (default: its hostname)
    #[arg(long)]
    pub label: Option<String>,
    /// Where this machine reaches the ring 1 hub, when not at the address the server gives
    #[arg(long)]
    pub hub: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add a machine that runs its own agent as a ring 1 host: its node, its address on the
    /// hosts network and a join token for `enjin agent join` on the machine
    Add(HostAddArgs),
}

#[derive(Debug, Args)]
pub struct HostAddArgs {
    /// The host's label
    pub name: String,
    /// The machine's address on the hosts network (default: the next free one)
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,
    /// The ring 0 machine that is its parent (uuid or label; default: the only one)
    #[arg(long)]
    pub parent: Option<String>,
    /// Seconds the join token stays valid
    #[arg(long)]
    pub ttl: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve the API on
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the ring 1 bus hub (`enjin up` only; with network namespaces only its port
    /// counts: the hub listens on the hosts' bridge)
    #[arg(long)]
    pub bus_listen: Option<SocketAddr>,
    /// How many ring 1 hosts to run (`enjin up` only; default 2)
    #[arg(long)]
    pub hosts: Option<usize>,
    /// The hosts' network range (`enjin up` as root; default 10.250.0.0/24)
    #[arg(long)]
    pub hosts_cidr: Option<enjin_model::kinds::Cidr>,
    /// The instance network's range: each host owns the /24 at its offset on the hosts network
    /// (`enjin up` as root; default 10.252.0.0/16)
    #[arg(long)]
    pub instance_cidr: Option<enjin_model::kinds::Cidr>,
    /// Address of the HTTP router that serves apps (`enjin up` only; default 127.0.0.1:7482)
    #[arg(long)]
    pub router_listen: Option<SocketAddr>,
    /// Address of the DNS service, UDP and TCP (`enjin up` only; default 127.0.0.1:7453)
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// Serve the API as plain HTTP instead of TLS; refused unless --listen is a loopback address
    #[arg(long)]
    pub insecure_http: bool,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Remove the data directory too: the cloud is gone for good
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    /// Print a nats-server configuration for this cloud's ring 1 bus (`[bus] nats_url`): its
    /// operator and account, JetStream, and mutual TLS with a certificate from the ring 1 CA
    /// (written, 0600, to `<data-dir>/nats`)
    Config(NatsConfigArgs),
}

#[derive(Debug, Args)]
pub struct NatsConfigArgs {
    /// Where the server listens
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub listen: SocketAddr,
    /// Names (IP addresses or DNS names) its certificate carries besides the listen address,
    /// such as the hosts' gateway (repeatable)
    #[arg(long = "name")]
    pub names: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the data directory's SQLite store into an empty etcd cluster and verify it; the
    /// cloud must be stopped. Then set `[store] backend = "etcd"` in enjin.toml
    Copy(StoreCopyArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreTarget {
    Etcd,
}

#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The backend to copy to
    #[arg(long, value_enum)]
    pub to: StoreTarget,
    /// etcd's client URLs, comma-separated: all https://host:port, or all http:// on loopback
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// With https:// endpoints, the CA of etcd's server certificates (default: the ring 0 CA)
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The context's name (default: the server's host and port)
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List contexts; the current one is marked
    #[command(visible_alias = "ls")]
    List,
    /// Make a context the current one
    Use { name: String },
    /// Print the current context's name
    Current,
    /// Forget a context (its token and CA with it)
    #[command(visible_alias = "rm")]
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ObjectCommand {
    /// Create one (spec from --file and/or --set)
    Create(CreateArgs),
    /// List them
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one, by uuid or label
    Get { id: String },
    /// Change one: fetch, apply --label/--labels/--set/--file, write back at the fetched revision
    Update(UpdateArgs),
    /// Delete one, by uuid or label
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
        /// Only if it is still at this revision
        #[arg(long)]
        revision: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccessRuleCommand {
    /// Allow (or --deny) connections from one end to the other: `--to APP[:PROC]` makes an
    /// ingress rule for that app's instances from `--from`; `--to CIDR` an egress rule from
    /// the `--from` app. Without --from, --to or --port: the generic create (--set, --file)
    Create(AccessRuleCreateArgs),
    /// List rules: name, from, to, ports, action
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// What an instance's firewall applies beyond the defaults, in order (node label or uuid)
    Effective { instance: String },
    /// Show one, by uuid or label
    Get { id: String },
    /// Change one: fetch, apply --label/--labels/--set/--file, write back at the fetched revision
    Update(UpdateArgs),
    /// Delete one, by uuid or label
    #[command(visible_alias = "rm")]
    Delete {
        id: String,
        /// Only if it is still at this revision
        #[arg(long)]
        revision: Option<i64>,
    },
}

#[derive(Debug, Args)]
pub struct AccessRuleCreateArgs {
    /// The rule's name
    pub label: Option<String>,
    /// Where connections come from: an app of the account (`APP` or `APP:PROCESS`) or an
    /// address range (`10.0.0.0/8`, or one address)
    #[arg(long, value_name = "APP[:PROC]|CIDR")]
    pub from: Option<String>,
    /// Where they go: an app of the account (an ingress rule) or an address range (an egress
    /// rule of the --from app)
    #[arg(long, value_name = "APP[:PROC]|CIDR")]
    pub to: Option<String>,
    /// The destination port or range, `N` or `N-M`
    #[arg(long, value_name = "N[-M]")]
    pub port: Option<enjin_model::kinds::PortRange>,
    #[arg(long, value_enum, default_value_t = RuleProtocol::Tcp)]
    pub protocol: RuleProtocol,
    /// Refuse such connections instead of allowing them
    #[arg(long)]
    pub deny: bool,
    /// Lower numbers are evaluated first (default 1000); at one priority a deny comes first
    #[arg(long)]
    pub priority: Option<u32>,
    /// The rule set, by label or uuid (default: the account's `default` set on the instance
    /// network, made when missing)
    #[arg(long)]
    pub rule_set: Option<String>,
    /// Ring, for the generic create (access rules on the instance network are ring 2)
    #[arg(long, default_value = "2")]
    pub ring: Ring,
    /// The account the rule belongs to, by label or uuid (default: your own)
    #[arg(long)]
    pub account: Option<String>,
    #[command(flatten)]
    pub content: ContentArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuleProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    #[command(flatten)]
    Object(ObjectCommand),
    /// Each account you may read (or the one named): its quota and what it uses
    Status { account: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum CompartmentCommand {
    #[command(flatten)]
    Object(ObjectCommand),
    /// Draw the compartment graph
    Tree,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    #[command(flatten)]
    Object(ObjectCommand),
    /// Run a command as a supervised ring 2 node on a ring 1 host
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node's label
    pub label: String,
    /// The ring 1 host to run it on (uuid or label)
    #[arg(long)]
    pub host: String,
    /// How the host runs it: unix-user (isolated, needs root on the host) or process
    #[arg(long, default_value = "unix-user")]
    pub strategy: String,
    /// permanent, transient or temporary
    #[arg(long, default_value = "permanent")]
    pub restart: String,
    /// At most this many restarts …
    #[arg(long, default_value_t = 5)]
    pub max_restarts: u32,
    /// … in this many seconds
    #[arg(long, default_value_t = 60)]
    pub period: u64,
    /// Health probe: `tcp:PORT`, `http:PORT[/PATH]` or `process`
    #[arg(long)]
    pub probe: Option<String>,
    /// Environment variable, KEY=VALUE (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory limit in bytes
    #[arg(long)]
    pub memory: Option<u64>,
    /// CPU limit in thousandths of a core
    #[arg(long)]
    pub cpu_millis: Option<u64>,
    /// Process limit
    #[arg(long)]
    pub pids: Option<u64>,
    /// The command and its arguments
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The label (name)
    pub label: Option<String>,
    /// Ring: 0 meta, 1 infrastructure, 2 platform
    #[arg(long, default_value = "0")]
    pub ring: Ring,
    /// The account it belongs to, by label or uuid (default: your own)
    #[arg(long)]
    pub account: Option<String>,
    #[command(flatten)]
    pub content: ContentArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    /// New label
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub content: ContentArgs,
}

/// What goes into an object besides its label, for create and update.
#[derive(Debug, Args)]
pub struct ContentArgs {
    /// Selector label, key=value (repeatable)
    #[arg(long = "labels", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A spec field, path=value: the value is JSON if it parses, else a string; references
    /// may be given by label (repeatable)
    #[arg(long = "set", short = 's', value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// A JSON or TOML file with the spec (for create, also a whole request with a `spec` key);
    /// - for stdin
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub ring: Option<Ring>,
    /// Compartment uuid or label
    #[arg(long)]
    pub compartment: Option<String>,
    /// Tier uuid or label
    #[arg(long)]
    pub tier: Option<String>,
    #[arg(long)]
    pub label: Option<String>,
    /// Parent uuid or label
    #[arg(long)]
    pub parent: Option<String>,
    /// key=value[,key=value]
    #[arg(long)]
    pub selector: Option<String>,
    /// Only this account's (label or uuid)
    #[arg(long)]
    pub account: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a principal (shown once); it never holds more than you do
    Create {
        principal: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Only in this account (label or uuid)
        #[arg(long)]
        account: Option<String>,
        /// Only this role's permissions (label or uuid; a role of the account or a built-in one)
        #[arg(long)]
        role: Option<String>,
        /// Stop working after this long: 90s, 30m, 12h, 30d
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets)
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token by id
    Revoke { id: uuid::Uuid },
    /// Derive a narrower token from a biscuit, offline (the server is not asked): the biscuit
    /// comes from --token (`-` reads it from standard input); prints the new one
    Attenuate {
        /// Only these verbs: get,list,create,update,delete,watch
        #[arg(long, value_delimiter = ',')]
        verbs: Vec<String>,
        /// Only requests about this app (its routes under /v1/apps/APP)
        #[arg(long)]
        app: Option<String>,
        /// Stop working after this long: 90s, 10m, 12h, 30d
        #[arg(long)]
        expires: Option<String>,
        /// A further check in Biscuit's Datalog, e.g. 'check if route("/v1/apps/{app}/logs")'
        #[arg(long = "check")]
        checks: Vec<String>,
    },
    /// Revoke a biscuit and every token derived from it (not what it was derived from)
    RevokeDerived {
        /// The biscuit (enjinb_…), or `-` to read it from standard input
        biscuit: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List bus identities (public keys only)
    #[command(visible_alias = "ls")]
    List,
    /// Replace a key held by this machine; the old one stays accepted for the overlap
    Rotate {
        /// Key id (hex, or a unique prefix of it)
        id: String,
        /// Seconds the old key stays accepted
        #[arg(long)]
        overlap: Option<u64>,
    },
    /// Revoke a key: every node of its ring stops accepting it
    Revoke {
        /// Key id (hex, or a unique prefix of it)
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Issue a join token (shown once, works once)
    Create {
        /// The ring the child joins
        #[arg(long)]
        ring: Ring,
        /// The supervising node, one ring below (uuid or label)
        #[arg(long)]
        parent: String,
        /// Seconds the token stays valid
        #[arg(long)]
        ttl: Option<u64>,
        /// The node the joiner will speak for (uuid or label): a node of the ring under the
        /// parent
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BusCommand {
    /// Print verified messages on a topic (`*` one token, `>` the rest) until Ctrl-C
    Tail {
        topic: String,
        #[arg(long, default_value_t = 1)]
        ring: u8,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes since then: 10m, 2h, 1d, or an RFC 3339 time
    #[arg(long)]
    pub since: Option<String>,
    /// Only this principal's changes
    #[arg(long)]
    pub principal: Option<String>,
    /// At most this many records, the newest (at most 1000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this kind
    #[arg(long)]
    pub kind: Option<enjin_model::Kind>,
    /// From this revision (default: changes after now)
    #[arg(long)]
    pub from: Option<i64>,
}

impl Cli {
    /// Whether this command runs a long-lived server (and so logs at info by default).
    pub fn is_server(&self) -> bool {
        matches!(self.command, Command::Up(_) | Command::Server(_) | Command::Agent(_) | Command::Edge(_))
    }
}
