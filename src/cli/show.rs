//! `strait show connections|endpoints|gateways|networks|all`: the cluster
//! set as the broker holds it, as tables.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::broker::dir::read_snapshot;
use crate::broker::kube;
use crate::broker::{BrokerLocation, Snapshot};

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// What to show.
    #[arg(value_enum)]
    pub what: What,
    /// The broker: `dir:PATH` or `kube:KUBECONFIG`.
    #[arg(long)]
    pub broker: BrokerLocation,
    /// With a `kube:` broker, the local cluster whose Gateway objects to
    /// show (in `--namespace`); without it gateways and connections are
    /// not shown.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The local cluster's Strait namespace.
    #[arg(long, default_value = "strait")]
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    Connections,
    Endpoints,
    Gateways,
    Networks,
    All,
}

pub fn run(args: ShowArgs) -> anyhow::Result<()> {
    let snapshot = match &args.broker {
        BrokerLocation::Dir(path) => read_snapshot(path)?,
        BrokerLocation::Kube(kubeconfig) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async {
                let broker = kube::connect(kubeconfig).await?;
                let local = match &args.kubeconfig {
                    Some(path) => Some(kube::Namespace {
                        name: args.namespace.clone(),
                        ..kube::connect(path).await?
                    }),
                    None => None,
                };
                kube::read_snapshot(&broker, local.as_ref()).await
            })?
        }
    };
    print!("{}", render(&snapshot, args.what));
    Ok(())
}

/// The tables for `what`.
pub fn render(snapshot: &Snapshot, what: What) -> String {
    let sections: &[What] = match what {
        What::All => &[
            What::Networks,
            What::Endpoints,
            What::Gateways,
            What::Connections,
        ],
        one => std::slice::from_ref(match one {
            What::Connections => &What::Connections,
            What::Endpoints => &What::Endpoints,
            What::Gateways => &What::Gateways,
            _ => &What::Networks,
        }),
    };
    let mut out = String::new();
    for (i, section) in sections.iter().enumerate() {
        if what == What::All {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("{section:?}\n").to_uppercase());
        }
        out.push_str(&table(rows(snapshot, *section)));
    }
    for skipped in &snapshot.skipped {
        out.push_str(&format!("skipped {}: {}\n", skipped.source, skipped.reason));
    }
    out
}

fn rows(snapshot: &Snapshot, what: What) -> Vec<Vec<String>> {
    match what {
        What::Connections => {
            let mut rows = vec![vec![
                "GATEWAY",
                "CLUSTER",
                "REMOTE GATEWAY",
                "REMOTE CLUSTER",
                "REMOTE IP",
                "CABLE DRIVER",
                "SUBNETS",
                "STATUS",
                "RTT AVG",
            ]
            .into_iter()
            .map(String::from)
            .collect()];
            for gateway in &snapshot.gateways {
                let status = &gateway.body.status;
                for c in &status.connections {
                    rows.push(vec![
                        status.local_endpoint.hostname.clone(),
                        status.local_endpoint.cluster_id.clone(),
                        c.endpoint.hostname.clone(),
                        c.endpoint.cluster_id.clone(),
                        c.using_ip.clone(),
                        c.endpoint.backend.clone(),
                        c.endpoint.subnets.join(","),
                        if c.status_message.is_empty() {
                            c.status.clone()
                        } else {
                            format!("{} ({})", c.status, c.status_message)
                        },
                        c.latency_rtt
                            .as_ref()
                            .map(|l| l.average.clone())
                            .unwrap_or_default(),
                    ]);
                }
            }
            rows
        }
        What::Endpoints => {
            let mut rows = vec![[
                "CLUSTER",
                "HOSTNAME",
                "PRIVATE IP",
                "PUBLIC IP",
                "CABLE DRIVER",
                "SUBNETS",
            ]
            .map(String::from)
            .to_vec()];
            for e in &snapshot.endpoints {
                let s = &e.body.spec;
                rows.push(vec![
                    s.cluster_id.clone(),
                    s.hostname.clone(),
                    s.private_ip.clone(),
                    s.public_ip.clone(),
                    s.backend.clone(),
                    s.subnets.join(","),
                ]);
            }
            rows
        }
        What::Gateways => {
            let mut rows = vec![["NODE", "CLUSTER", "HA STATUS", "SUMMARY"]
                .map(String::from)
                .to_vec()];
            for g in &snapshot.gateways {
                let s = &g.body.status;
                let connected = s
                    .connections
                    .iter()
                    .filter(|c| c.status == "connected")
                    .count();
                rows.push(vec![
                    s.local_endpoint.hostname.clone(),
                    s.local_endpoint.cluster_id.clone(),
                    s.ha_status.clone(),
                    format!(
                        "{connected} of {} connections connected",
                        s.connections.len()
                    ),
                ]);
            }
            rows
        }
        What::Networks | What::All => {
            let mut rows = vec![["CLUSTER", "POD CIDRS", "SERVICE CIDRS", "GLOBAL CIDRS"]
                .map(String::from)
                .to_vec()];
            for c in &snapshot.clusters {
                let s = &c.body.spec;
                rows.push(vec![
                    s.cluster_id.clone(),
                    s.cluster_cidr.join(","),
                    s.service_cidr.join(","),
                    s.global_cidr.join(","),
                ]);
            }
            rows
        }
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
