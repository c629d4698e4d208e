//! One module per command.

mod access;
mod apps;
mod audit;
mod bus;
mod down;
mod hosts;
mod keys;
mod login;
mod objects;
mod serve;
mod store;
mod token;
mod tree;
mod watch;

use std::future::Future;

use anyhow::Result;
use clap::CommandFactory;
use enjin_client::Client;
use enjin_model::Kind;

use crate::args::{
    AccountCommand, AgentArgs, AgentCommand, AppCommand, Cli, Command, CompartmentCommand, Global,
    HostCommand, NatsCommand, NodeCommand, StoreCommand,
};
use crate::config;

/// Run one command; `shutdown` completes when the process is asked to stop (the long-running
/// commands stop gracefully then; the others mostly never look at it).
pub async fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        // The long-running parts create everything private (0600 files, 0700 directories);
        // what must be wider says so with an explicit mode.
        Command::Up(args) => {
            enjin_sys::proc::private_umask();
            serve::run(g, &args, enjin_node::Mode::Up, shutdown).await
        }
        Command::Down(args) => down::run(g, &args),
        Command::Server(args) => {
            enjin_sys::proc::private_umask();
            serve::run(g, &args, enjin_node::Mode::Server, shutdown).await
        }
        Command::Store(StoreCommand::Copy(args)) => store::copy(g, &args).await,
        Command::Nats(NatsCommand::Config(args)) => store::nats_config(g, &args),
        Command::Agent(AgentArgs { command: Some(AgentCommand::Join(args)), .. }) => {
            enjin_sys::proc::private_umask();
            hosts::join(g, &args).await
        }
        Command::Agent(AgentArgs { ring: Some(ring), dir: Some(dir), .. }) => {
            enjin_sys::proc::private_umask();
            let config = enjin_agent::process::ProcessConfig { ring, dir };
            Ok(enjin_agent::process::run(config, shutdown).await?)
        }
        Command::Agent(_) => anyhow::bail!("`enjin agent` needs --ring and --dir, or a subcommand"),
        Command::Host(HostCommand::Add(args)) => hosts::add(g, &args).await,
        Command::Edge(args) => {
            enjin_sys::proc::private_umask();
            Ok(enjin_edge::run(enjin_edge::EdgeConfig { dir: args.dir }, shutdown).await?)
        }
        Command::Account(AccountCommand::Object(c)) => objects::run(g, Kind::Account, c).await,
        Command::Account(AccountCommand::Status { account }) => token::account_status(g, account).await,
        Command::Role(c) => objects::run(g, Kind::Role, c).await,
        Command::Membership(c) => objects::run(g, Kind::Membership, c).await,
        Command::Network(c) => objects::run(g, Kind::Network, c).await,
        Command::NetworkInterface(c) => objects::run(g, Kind::NetworkInterface, c).await,
        Command::AccessRuleSet(c) => objects::run(g, Kind::AccessRuleSet, c).await,
        Command::AccessRule(c) => access::run(g, c).await,
        Command::Compartment(CompartmentCommand::Object(c)) => objects::run(g, Kind::Compartment, c).await,
        Command::Compartment(CompartmentCommand::Tree) => tree::run(g).await,
        Command::Tier(c) => objects::run(g, Kind::Tier, c).await,
        Command::Node(NodeCommand::Object(c)) => objects::run(g, Kind::Node, c).await,
        Command::Node(NodeCommand::Run(args)) => objects::run_node(g, args).await,
        Command::NodeObservation(c) => objects::run(g, Kind::NodeObservation, c).await,
        Command::Task(c) => objects::run(g, Kind::Task, c).await,
        Command::Release(c) => objects::run(g, Kind::Release, c).await,
        Command::Deploy(args) => apps::deploy(g, &args).await,
        Command::Apps => apps::list(g).await,
        Command::App(AppCommand::Status { app }) => apps::status(g, &app).await,
        Command::Scale { app, counts } => apps::scale(g, &app, &counts).await,
        Command::Restart { app } => apps::restart(g, &app).await,
        Command::Rollback { app, version } => apps::rollback(g, &app, version.as_deref()).await,
        Command::Releases { app } => apps::releases(g, &app).await,
        Command::Logs(args) => apps::logs(g, &args).await,
        Command::Token(c) => token::run(g, c).await,
        Command::Key(c) => keys::run(g, c).await,
        Command::JoinToken(c) => keys::join_token(g, c).await,
        Command::Bus(c) => bus::run(g, c, shutdown).await,
        Command::Watch(args) => watch::run(g, &args, shutdown).await,
        Command::Audit(args) => audit::run(g, &args).await,
        Command::Login(args) => login::login(g, &args).await,
        Command::Context(c) => login::context(g, c),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "enjin", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// A client for the server, token and CA the global flags point at (see `config::target`).
pub fn client(g: &Global) -> Result<Client> {
    let t = config::target(g)?;
    Ok(Client::with_ca(&t.server, t.token, t.ca_pem.as_deref())?)
}
