//! The globalnet role, on a gateway of a globalnet cluster: its slice of
//! the global range (claimed once in the broker), the ingress IPs of its
//! exported services, and the translation rules the node's nft table gets.
//!
//! What it decided is kept in `STATE_DIR/globalnet.yaml` (written
//! atomically): the slice, the egress pool, each export's ingress IP and
//! target, and each refused export with its reason. A restart reads the
//! ingress IPs back, so exports keep their addresses.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use super::config::AgentConfig;
use super::egress_ips::{ClusterPoolRequest, EgressIps};
use super::gateway::TUNNEL_IF;
use super::service_exports::{Exported, ServiceExports};
use super::AgentError;
use crate::broker::globalnet::claim_slice;
use crate::metrics::Metrics;
use crate::net::nft::{EgressPool, GlobalnetNft, Protocol};
use crate::plan::globalnet::{
    allocate_ingress, allocate_pools, nft_rules, parse_export, Export, ExportedPod, Pool,
    SliceLayout,
};

/// The state file, in the agent's state directory.
pub const STATE_FILE: &str = "globalnet.yaml";

/// The contents of [`STATE_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalnetState {
    pub global_cidr: Option<Ipv4Net>,
    /// `FIRST-LAST`.
    pub egress_ips: String,
    pub health_check_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ingress: BTreeMap<String, IngressStatus>,
    /// Export name → why it has no ingress IP.
    #[serde(default)]
    pub refused: BTreeMap<String, String>,
    /// Kubernetes mode: `GlobalEgressIP` → its pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub egress_pools: BTreeMap<String, Pool>,
    /// `GlobalEgressIP` → why it has no pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub egress_refused: BTreeMap<String, String>,
    /// `ClusterGlobalEgressIP` → why it is not followed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_egress_refused: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressStatus {
    pub ip: Ipv4Addr,
    pub address: Ipv4Addr,
    /// 0 for a pod of a headless service: every port.
    pub port: u16,
    pub protocol: Protocol,
}

/// Where a cluster's global CIDR comes from when the configuration has
/// none.
pub enum SliceSource {
    /// Claimed in the directory broker at this path.
    BrokerDir(PathBuf),
    /// Nowhere: `strait join` allocates it and writes it into the
    /// configuration (`globalnet.global_cidr`).
    Joined,
}

/// Where the exported services come from.
pub enum ExportSource {
    /// `dir` mode: one file per export in this directory (none unset).
    Dir(Option<PathBuf>),
    /// Kubernetes mode: the local cluster's `ServiceExport`s and
    /// `GlobalEgressIP`s, and where what became of them is written.
    Kubernetes {
        exports: Box<ServiceExports>,
        egress_ips: Box<EgressIps>,
    },
}

/// What a pass decided beyond the state file, for writing it back to the
/// API once the node's rules are in place.
struct Decided {
    ingress: BTreeMap<String, Ipv4Addr>,
    pods: Vec<ExportedPod>,
    gone: Vec<String>,
    cluster_pool: Pool,
    reserved: u32,
}

pub struct GlobalnetRole {
    layout: SliceLayout,
    local_subnets: Vec<IpNet>,
    exports: ExportSource,
    /// Kubernetes mode: the state is not yet written back to the API.
    report_pending: bool,
    /// The last pass's decisions, for [`GlobalnetRole::write_back`].
    decided: Option<Decided>,
    state_path: PathBuf,
    state: GlobalnetState,
    reported_refusals: HashSet<(String, String)>,
    metrics: Arc<Metrics>,
}

impl GlobalnetRole {
    /// Takes this cluster's slice (configured, or claimed in the broker
    /// directory) and reads the previous state back.
    pub fn start(
        config: &AgentConfig,
        slices: &SliceSource,
        exports: ExportSource,
        metrics: Arc<Metrics>,
    ) -> Result<GlobalnetRole, AgentError> {
        let g = &config.globalnet;
        let cidr = match (g.global_cidr, slices) {
            (Some(cidr), _) => cidr,
            (None, SliceSource::BrokerDir(root)) => {
                claim_slice(root, &config.cluster_id, g.cidr_range, g.cluster_size)?
            }
            (None, SliceSource::Joined) => {
                return Err(AgentError::Unsupported(
                    "globalnet without globalnet.global_cidr outside a dir: broker".into(),
                ))
            }
        };
        let layout = SliceLayout::new(cidr, g.egress_ips)
            .map_err(crate::broker::globalnet::ClaimError::from)?;
        tracing::info!(global_cidr = %cidr, "globalnet: this cluster's global CIDR");
        let state_path = config.state_dir.join(STATE_FILE);
        let state = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_yaml::from_str::<GlobalnetState>(&text)
                .ok()
                .filter(|s| s.global_cidr == Some(cidr))
                .unwrap_or_default(),
            Err(_) => GlobalnetState::default(),
        };
        let role = GlobalnetRole {
            layout,
            local_subnets: config.subnets(),
            exports,
            report_pending: true,
            decided: None,
            state_path,
            state,
            reported_refusals: HashSet::new(),
            metrics,
        };
        Ok(role)
    }

    pub fn layout(&self) -> SliceLayout {
        self.layout
    }

    /// Reads the exports, allocates their ingress IPs, records the result;
    /// returns the rules for the node's nft table. Once they are applied,
    /// [`GlobalnetRole::write_back`] reports the result to the API.
    pub async fn reconcile(&mut self) -> Result<GlobalnetNft, AgentError> {
        let local = &self.local_subnets;
        let reserved = self.layout.egress;
        let (exported, (requests, mut egress_refused), cluster_request) = match &self.exports {
            ExportSource::Dir(dir) => {
                let (exports, refused) = read_exports(dir.as_deref(), local);
                (
                    Exported {
                        exports,
                        pods: Vec::new(),
                        refused,
                    },
                    Default::default(),
                    ClusterPoolRequest::all(reserved),
                )
            }
            ExportSource::Kubernetes {
                exports,
                egress_ips,
            } => (
                exports.current(local),
                egress_ips.current(local),
                egress_ips.cluster_pool(reserved),
            ),
        };
        let Exported {
            exports,
            pods,
            mut refused,
        } = exported;
        let cluster_pool = self.layout.cluster_pool(cluster_request.count);
        // Pools that keep their addresses are not for ingress IPs; new
        // pools are fitted around the ingress IPs.
        let kept_pools: BTreeSet<Ipv4Addr> = self
            .state
            .egress_pools
            .iter()
            .filter(|(name, pool)| requests.get(*name).is_some_and(|r| r.count == pool.count))
            .flat_map(|(_, pool)| pool.addresses())
            .collect();
        let wanted: BTreeSet<String> = exports
            .iter()
            .map(|e| e.name.clone())
            .chain(pods.iter().map(|p| p.name.clone()))
            .collect();
        let previous: BTreeMap<String, Ipv4Addr> = self
            .state
            .ingress
            .iter()
            .map(|(name, status)| (name.clone(), status.ip))
            .collect();
        let (ingress, exhausted) = allocate_ingress(&self.layout, &previous, &wanted, &kept_pools);
        refused.extend(exhausted.into_iter().map(|(n, e)| (n, e.to_string())));
        let counts = requests.iter().map(|(n, r)| (n.clone(), r.count)).collect();
        let (pools, no_room) = allocate_pools(
            &self.layout,
            &self.state.egress_pools,
            &counts,
            &ingress.values().copied().collect(),
        );
        egress_refused.extend(no_room.into_iter().map(|(n, e)| (n, e.to_string())));

        let state = GlobalnetState {
            global_cidr: Some(self.layout.cidr),
            egress_ips: format!("{}-{}", cluster_pool.first, cluster_pool.last()),
            health_check_ip: Some(self.layout.health_check_ip()),
            ingress: exports
                .iter()
                .map(|e| (&e.name, e.address, e.port, e.protocol))
                // A pod is reached on every port.
                .chain(pods.iter().map(|p| (&p.name, p.address, 0, Protocol::Tcp)))
                .filter_map(|(name, address, port, protocol)| {
                    let ip = *ingress.get(name)?;
                    Some((
                        name.clone(),
                        IngressStatus {
                            ip,
                            address,
                            port,
                            protocol,
                        },
                    ))
                })
                .collect(),
            refused,
            egress_pools: pools,
            egress_refused,
            cluster_egress_refused: cluster_request.refused,
        };
        let gone: Vec<String> = self
            .state
            .ingress
            .keys()
            .filter(|name| !state.ingress.contains_key(*name))
            .cloned()
            .collect();
        if state != self.state {
            write_atomically(&self.state_path, &state)?;
            self.state = state;
            self.report_pending = true;
        }
        self.report(cluster_pool);
        // Deletions a failed write left undone stay due.
        let mut gone = gone;
        if let Some(previous) = self.decided.take() {
            let undone: Vec<String> = previous
                .gone
                .into_iter()
                .filter(|n| !ingress.contains_key(n) && !gone.contains(n))
                .collect();
            gone.extend(undone);
        }
        self.decided = Some(Decided {
            ingress: ingress.clone(),
            pods: pods.clone(),
            gone,
            cluster_pool,
            reserved,
        });
        let egress_pools = self
            .state
            .egress_pools
            .iter()
            .map(|(name, pool)| EgressPool {
                name: name.clone(),
                sources: requests
                    .get(name)
                    .map(|r| r.sources.clone())
                    .unwrap_or_default(),
                first: pool.first,
                last: pool.last(),
            })
            .collect();
        Ok(nft_rules(
            TUNNEL_IF,
            cluster_pool,
            &exports,
            &pods,
            &ingress,
            egress_pools,
        ))
    }

    /// Kubernetes mode: writes the last pass's result (ingress IPs, export
    /// conditions, egress pools) to the API when it changed or an earlier
    /// write failed. Called once the node applied the pass's rules, so an
    /// address reported allocated already translates.
    pub async fn write_back(&mut self) {
        let written = match (&self.exports, &self.decided, self.report_pending) {
            (
                ExportSource::Kubernetes {
                    exports,
                    egress_ips,
                },
                Some(decided),
                true,
            ) => {
                let state = &self.state;
                async {
                    exports
                        .report(
                            &decided.ingress,
                            &decided.pods,
                            &state.refused,
                            &decided.gone,
                        )
                        .await?;
                    egress_ips
                        .report(&state.egress_pools, &state.egress_refused)
                        .await?;
                    egress_ips
                        .report_cluster_pool(
                            decided.cluster_pool,
                            decided.reserved,
                            &state.cluster_egress_refused,
                        )
                        .await
                }
                .await
            }
            // Nothing to write: dir mode, or nothing changed.
            _ => Ok(()),
        };
        match written {
            Ok(()) => {
                self.report_pending = false;
                if let Some(decided) = &mut self.decided {
                    decided.gone.clear();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "globalnet: writing the status of exports and egress IPs failed")
            }
        }
    }

    /// Logs each refusal once while it lasts; sets the gauges.
    fn report(&mut self, cluster_pool: Pool) {
        let refusals: HashSet<(String, String)> = self
            .state
            .refused
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (export, reason) in refusals.difference(&self.reported_refusals) {
            tracing::warn!(%export, %reason, "globalnet: export refused");
        }
        self.reported_refusals = refusals;

        let cidr = self.layout.cidr.to_string();
        let labels = [cidr.as_str()];
        let ingress = self.state.ingress.len();
        let pooled: u32 = self.state.egress_pools.values().map(|p| p.count).sum();
        let (allocated, available) = self.layout.usage(ingress + pooled as usize);
        let m = &self.metrics;
        m.global_ip_availability
            .with_label_values(&labels)
            .set(f64::from(available));
        m.global_ip_allocated
            .with_label_values(&labels)
            .set(f64::from(allocated));
        // No per-namespace or per-pod egress IPs in dir mode.
        m.global_egress_ip_allocated
            .with_label_values(&labels)
            .set(f64::from(pooled));
        m.cluster_global_egress_ip_allocated
            .with_label_values(&labels)
            .set(f64::from(cluster_pool.count));
        m.global_ingress_ip_allocated
            .with_label_values(&labels)
            .set(ingress as f64);
        m.globalnet_exports_refused
            .set(self.state.refused.len() as i64);
    }
}

/// The exports of the exports directory, and the refused ones with their
/// reasons. A missing directory has none.
fn read_exports(dir: Option<&Path>, local: &[IpNet]) -> (Vec<Export>, BTreeMap<String, String>) {
    let mut exports = Vec::new();
    let mut refused = BTreeMap::new();
    let Some(dir) = dir else {
        return (exports, refused);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (exports, refused),
        Err(e) => {
            refused.insert(dir.display().to_string(), format!("unreadable: {e}"));
            return (exports, refused);
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.starts_with('.'))
            .and_then(|n| n.strip_suffix(".yaml"))
        else {
            continue;
        };
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|text| parse_export(stem, &text, local));
        match parsed {
            Ok(export) => exports.push(export),
            Err(reason) => {
                refused.insert(stem.to_string(), reason);
            }
        }
    }
    (exports, refused)
}

fn write_atomically(path: &Path, state: &GlobalnetState) -> Result<(), AgentError> {
    let text = serde_yaml::to_string(state).expect("the state serializes");
    let temp = path.with_extension("yaml.tmp");
    let io = |source| AgentError::State {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&temp, text).map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}
