//! The `strait` command line: one file per subcommand, each thin.

use clap::{Parser, Subcommand, ValueEnum};

pub mod agent;
pub mod deploy_broker;
pub mod join;
pub mod show;
pub mod tunnel;
pub mod uninstall;

#[derive(Debug, Parser)]
#[command(
    name = "strait",
    version,
    about = "Connects Kubernetes clusters at layer 3 over WireGuard"
)]
pub struct Cli {
    /// Log line format (the level comes from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain, env = "STRAIT_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: connects this cluster's gateway to the others.
    Agent(agent::AgentArgs),
    /// Set up a broker on a Kubernetes API server and write the broker-info file.
    DeployBroker(deploy_broker::DeployBrokerArgs),
    /// Join this Kubernetes cluster to a broker and install Strait into it.
    Join(join::JoinArgs),
    /// Show the cluster set as the broker sees it.
    Show(show::ShowArgs),
    /// Run a userspace WireGuard interface that wg(8) configures.
    Tunnel(tunnel::TunnelArgs),
    /// Remove every kernel object Strait owns on this node (stop the agent first).
    Uninstall(uninstall::UninstallArgs),
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Standard error that never fails: a closed log pipe (a detached device
/// whose parent has gone) must not take the device down with it.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::DeployBroker(args) => deploy_broker::run(args),
        Command::Join(args) => join::run(args),
        Command::Show(args) => show::run(args),
        Command::Tunnel(args) => tunnel::run(args),
        Command::Uninstall(args) => uninstall::run(args),
    }
}
