//! `strait join BROKER_INFO --clusterid ID`: an account on the broker for
//! this cluster, and Strait installed into it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ipnet::IpNet;

use crate::kubernetes::join::{join, Event, JoinOptions};
use crate::kubernetes::manifests::DEFAULT_NAMESPACE;

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The file `deploy-broker` (or `subctl deploy-broker`) wrote.
    pub broker_info: PathBuf,
    /// This cluster's id in the set: a DNS label no other cluster has.
    #[arg(long)]
    pub clusterid: String,
    /// The joining cluster's API server (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Pod CIDRs (repeat or comma-separate); default: the nodes' spec.podCIDRs.
    #[arg(long, value_delimiter = ',')]
    pub clustercidr: Vec<IpNet>,
    /// Service CIDRs; default: the cluster's ServiceCIDR objects.
    #[arg(long, value_delimiter = ',')]
    pub servicecidr: Vec<IpNet>,
    /// The agent image, instead of deploy/daemonset.yaml's.
    #[arg(long)]
    pub image: Option<String>,
    /// Where Strait is installed in the cluster.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// How long the cluster's broker token lives; run join again to renew it.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub token_duration: Duration,
}

pub fn run(args: JoinArgs) -> anyhow::Result<()> {
    let opts = JoinOptions {
        broker_info: args.broker_info,
        cluster_id: args.clusterid,
        kubeconfig: args.kubeconfig,
        cluster_cidrs: args.clustercidr,
        service_cidrs: args.servicecidr,
        image: args.image,
        namespace: args.namespace,
        token_duration: args.token_duration,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(join(&opts, &mut |event| match event {
        Event::Broker(applied) => println!("broker: {applied}"),
        Event::Cluster(applied) => println!("cluster: {applied}"),
        Event::Note(note) => println!("{note}"),
    }))?;
    println!("cluster {} joined", opts.cluster_id);
    Ok(())
}
