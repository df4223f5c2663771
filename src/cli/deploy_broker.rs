//! `strait deploy-broker`: a broker namespace on one API server, and the
//! broker-info file clusters join with.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::Ipv4Net;

use crate::kubernetes::deploy_broker::{deploy_broker, DeployBrokerOptions, DEFAULT_NAMESPACE};
use crate::kubernetes::globalnet_info::GlobalnetSettings;

#[derive(Debug, Clone, Args)]
pub struct DeployBrokerArgs {
    /// The broker's API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The broker namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Let clusters with overlapping CIDRs join, each given a global CIDR.
    #[arg(long)]
    pub globalnet: bool,
    /// The range global CIDRs are taken from.
    #[arg(long, default_value = "242.0.0.0/8")]
    pub globalnet_cidr_range: Ipv4Net,
    /// Addresses per cluster's global CIDR.
    #[arg(long, default_value_t = 65536)]
    pub globalnet_cluster_size: u32,
    /// How long the broker-info file's administrator token lives.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub token_duration: Duration,
    /// Where the broker-info file goes.
    #[arg(long, default_value = "broker-info.subm")]
    pub output: PathBuf,
}

pub fn run(args: DeployBrokerArgs) -> anyhow::Result<()> {
    let opts = DeployBrokerOptions {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        globalnet: GlobalnetSettings {
            enabled: args.globalnet,
            cidr_range: args.globalnet_cidr_range,
            cluster_size: args.globalnet_cluster_size,
        },
        token_duration: args.token_duration,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let deployed = runtime.block_on(deploy_broker(&opts, &mut |applied| println!("{applied}")))?;
    write_private(&args.output, &deployed.info.encode())
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "broker-info written to {} (its token expires {})",
        args.output.display(),
        deployed.token_expires
    );
    Ok(())
}

/// Writes a file only its owner reads: it holds the administrator token.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}
