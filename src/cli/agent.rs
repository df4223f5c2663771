//! `strait agent --config FILE`: the node daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::agent::{self, config::AgentConfig};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The agent's YAML configuration.
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        agent::run(config, shutdown).await?;
        Ok(())
    })
}
