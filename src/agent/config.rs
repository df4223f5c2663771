//! `strait agent --config FILE`: the node agent's YAML configuration.
//! Every field has a default where one exists; a wrong field is reported
//! with its path and the agent does not start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::lease::{LeaseConfig, LeaseConfigError};
use crate::broker::types::is_dns_label;
use crate::broker::BrokerLocation;
use crate::plan::globalnet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This cluster's id: a DNS label, unique in the cluster set.
    pub cluster_id: String,
    /// In Kubernetes mode this section may be left out: the agent reads
    /// its node's name from `$NODE_NAME` and the rest from the Node object.
    #[serde(default)]
    pub node: NodeConfig,
    pub cluster: ClusterNetworks,
    /// Where the cluster set meets: `dir:PATH` or `kube:KUBECONFIG`.
    pub broker: BrokerLocation,
    /// Kubernetes mode: node facts from the API, gateway leader election,
    /// Gateway objects in the local cluster.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    #[serde(default)]
    pub cable: CableConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: SocketAddr,
    /// Runtime files of this agent: the tunnel's UAPI socket. The default
    /// is where wg(8) looks, so `wg show strait-wg` works on the node.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Global addresses for clusters whose CIDRs overlap.
    #[serde(default)]
    pub globalnet: GlobalnetConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalnetConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The cluster set's global range; each cluster gets a slice of it.
    #[serde(default = "default_global_range")]
    pub cidr_range: ipnet::Ipv4Net,
    /// Addresses per cluster slice: a power of two.
    #[serde(default = "default_cluster_size")]
    pub cluster_size: u32,
    /// The cluster's egress pool (Submariner's `ClusterGlobalEgressIP`).
    #[serde(default = "default_egress_ips")]
    pub egress_ips: u32,
    /// `dir` mode's exported services: one `<name>.yaml` per export
    /// (`name`, `address`, `port`, `protocol`), read on every pass.
    #[serde(default)]
    pub exports_dir: Option<PathBuf>,
    /// This cluster's slice, when allocated beforehand (`strait join`
    /// does, in the broker's `submariner-globalnet-info`); with a `dir:`
    /// broker the gateway claims one itself.
    #[serde(default)]
    pub global_cidr: Option<ipnet::Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default)]
    pub name: String,
    /// The node's address; a gateway's endpoint `private_ip`. Required
    /// unless Kubernetes mode finds it (the Node's InternalIP).
    #[serde(default)]
    pub ip: Option<IpAddr>,
    /// Whether this node may be the cluster's gateway. In Kubernetes mode
    /// the Node's label `submariner.io/gateway=true` says so, and the
    /// candidates elect the active one.
    #[serde(default)]
    pub gateway: bool,
    /// The address other clusters reach this gateway at, when NAT puts it
    /// elsewhere than `ip`. Kubernetes mode takes the Node's ExternalIP
    /// when this is not configured.
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The local cluster's API; default the pod's service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Where the gateway Lease and the Gateway objects live.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub lease: LeaseTimes,
}

/// Gateway leader election, in milliseconds: a lease not renewed for
/// `duration_ms` is free; the holder renews every `retry_period_ms` and
/// stops acting as the active gateway when it could not renew for
/// `renew_deadline_ms`. A clean stop hands the lease over at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseTimes {
    #[serde(default = "default_lease_duration_ms")]
    pub duration_ms: u64,
    #[serde(default = "default_lease_renew_deadline_ms")]
    pub renew_deadline_ms: u64,
    #[serde(default = "default_lease_retry_period_ms")]
    pub retry_period_ms: u64,
}

impl LeaseTimes {
    /// The election's timing, checked.
    pub fn config(&self) -> Result<LeaseConfig, LeaseConfigError> {
        LeaseConfig::new(
            Duration::from_millis(self.duration_ms),
            Duration::from_millis(self.renew_deadline_ms),
            Duration::from_millis(self.retry_period_ms),
        )
    }
}

impl Default for LeaseTimes {
    fn default() -> Self {
        LeaseTimes {
            duration_ms: default_lease_duration_ms(),
            renew_deadline_ms: default_lease_renew_deadline_ms(),
            retry_period_ms: default_lease_retry_period_ms(),
        }
    }
}

fn default_namespace() -> String {
    "strait".into()
}

fn default_lease_duration_ms() -> u64 {
    10_000
}

fn default_lease_renew_deadline_ms() -> u64 {
    5_000
}

fn default_lease_retry_period_ms() -> u64 {
    1_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNetworks {
    pub pod_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub service_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CableConfig {
    /// WireGuard's UDP port, published as `backend_config["udp-port"]`.
    #[serde(default = "default_udp_port")]
    pub udp_port: u16,
    /// The cluster set's pre-shared key string; the WireGuard PSK is its
    /// SHA-256, as Submariner derives it.
    #[serde(default)]
    pub psk: String,
    /// A file holding the PSK string instead (the broker Secret's `psk`).
    #[serde(default)]
    pub psk_file: Option<PathBuf>,
    /// Where the gateway keeps its private key, created on first start.
    #[serde(default = "default_private_key_file")]
    pub private_key_file: PathBuf,
    /// A fixed TCP MSS for cross-cluster traffic, for paths that drop the
    /// ICMP path-MTU discovery needs; by default MSS follows the route MTU.
    #[serde(default)]
    pub mss: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often each remote gateway is probed, in milliseconds.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Probes lost in a row before a connection is in error.
    #[serde(default = "default_max_lost")]
    pub max_lost: u32,
    /// The address this gateway probes from and answers on; default the
    /// first host address of the first pod CIDR.
    #[serde(default)]
    pub ip: Option<IpAddr>,
}

fn default_global_range() -> ipnet::Ipv4Net {
    globalnet::DEFAULT_RANGE
}

fn default_cluster_size() -> u32 {
    globalnet::DEFAULT_CLUSTER_SIZE
}

fn default_egress_ips() -> u32 {
    globalnet::DEFAULT_EGRESS_IPS
}

impl Default for GlobalnetConfig {
    fn default() -> Self {
        GlobalnetConfig {
            enabled: false,
            cidr_range: default_global_range(),
            cluster_size: default_cluster_size(),
            egress_ips: default_egress_ips(),
            exports_dir: None,
            global_cidr: None,
        }
    }
}

fn default_metrics_address() -> SocketAddr {
    "0.0.0.0:9898".parse().unwrap()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(crate::tunnel::uapi_socket::DEFAULT_DIR)
}

fn default_udp_port() -> u16 {
    4500
}

fn default_private_key_file() -> PathBuf {
    PathBuf::from("/var/lib/strait/private.key")
}

fn default_health_interval_ms() -> u64 {
    1000
}

fn default_max_lost() -> u32 {
    5
}

impl Default for CableConfig {
    fn default() -> Self {
        CableConfig {
            udp_port: default_udp_port(),
            psk: String::new(),
            psk_file: None,
            private_key_file: default_private_key_file(),
            mss: None,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: default_health_interval_ms(),
            max_lost: default_max_lost(),
            ip: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: at {field}: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(field, message)| ConfigError::Field {
            path: path.to_path_buf(),
            field,
            message,
        })
    }

    /// Parses and checks a configuration; an error names the field path.
    pub fn parse(text: &str) -> Result<AgentConfig, (String, String)> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        let config: AgentConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde_yaml appends its own position; the path says where.
            let message = message.split(" at line ").next().unwrap_or("").to_string();
            (if field == "." { "(top)".into() } else { field }, message)
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let fail = |field: &str, message: String| Err((field.to_string(), message));
        if !is_dns_label(&self.cluster_id) {
            return fail(
                "cluster_id",
                format!(
                    "{:?} is not a DNS label (a-z, 0-9, '-', at most 63)",
                    self.cluster_id
                ),
            );
        }
        match &self.kubernetes {
            None if self.node.name.is_empty() => {
                return fail("node.name", "must not be empty".into());
            }
            None if self.node.ip.is_none() => {
                return fail(
                    "node.ip",
                    "required outside Kubernetes mode (no `kubernetes:` section)".into(),
                );
            }
            Some(k) => {
                if let Err(e) = k.lease.config() {
                    return fail("kubernetes.lease", e.to_string());
                }
            }
            None => {}
        }
        if matches!(self.broker, BrokerLocation::Kube(_)) && self.kubernetes.is_none() {
            return fail(
                "broker",
                "a kube: broker needs the `kubernetes:` section (Gateway objects live in the local cluster)".into(),
            );
        }
        if !self.cable.psk.is_empty() && self.cable.psk_file.is_some() {
            return fail("cable.psk_file", "give psk or psk_file, not both".into());
        }
        if self.cluster.pod_cidrs.is_empty() {
            return fail(
                "cluster.pod_cidrs",
                "at least one pod CIDR is needed".into(),
            );
        }
        let all: Vec<(&str, &IpNet)> = self
            .cluster
            .pod_cidrs
            .iter()
            .map(|n| ("cluster.pod_cidrs", n))
            .chain(
                self.cluster
                    .service_cidrs
                    .iter()
                    .map(|n| ("cluster.service_cidrs", n)),
            )
            .collect();
        for (i, (field, a)) in all.iter().enumerate() {
            for (_, b) in &all[i + 1..] {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    return fail(field, format!("{a} overlaps {b}"));
                }
            }
        }
        if self.cable.udp_port == 0 {
            return fail("cable.udp_port", "must not be 0".into());
        }
        if self.health.interval_ms == 0 || self.health.max_lost == 0 {
            return fail("health", "interval_ms and max_lost must be above 0".into());
        }
        if let Some(ip) = self.health.ip {
            if !self.cluster.pod_cidrs.iter().any(|n| n.contains(&ip)) {
                return fail(
                    "health.ip",
                    format!("{ip} is not in the cluster's pod CIDRs"),
                );
            }
        }
        self.check_globalnet()
    }

    fn check_globalnet(&self) -> Result<(), (String, String)> {
        let g = &self.globalnet;
        if !g.enabled {
            return Ok(());
        }
        let fail = |field: &str, message: String| Err((format!("globalnet.{field}"), message));
        if let Some(ip) = self.health.ip {
            return Err((
                "health.ip".into(),
                format!("{ip}: with globalnet the health-check address is the last of the cluster's global CIDR"),
            ));
        }
        let prefix = match globalnet::slice_prefix(g.cidr_range, g.cluster_size) {
            Ok(prefix) => prefix,
            Err(e) => return fail("cluster_size", e.to_string()),
        };
        // Every slice has the same layout: check it on the first.
        let first = ipnet::Ipv4Net::new(g.cidr_range.network(), prefix).expect("a valid prefix");
        if let Err(e) = globalnet::SliceLayout::new(first, g.egress_ips) {
            return fail("egress_ips", e.to_string());
        }
        if let Some(cidr) = g.global_cidr {
            if cidr.prefix_len() != prefix || !g.cidr_range.contains(&cidr) {
                return fail(
                    "global_cidr",
                    format!(
                        "{cidr} is not a slice of {} addresses of {}",
                        g.cluster_size, g.cidr_range
                    ),
                );
            }
        } else if matches!(self.broker, BrokerLocation::Kube(_)) {
            return fail(
                "global_cidr",
                "required with a kube: broker (strait join allocates it)".into(),
            );
        }
        let range = IpNet::V4(g.cidr_range.trunc());
        if let Some(net) = self
            .subnets()
            .into_iter()
            .find(|n| range.contains(&n.network()) || n.contains(&range.network()))
        {
            return fail(
                "cidr_range",
                format!("{range} overlaps this cluster's {net}: global addresses must be outside every cluster CIDR"),
            );
        }
        Ok(())
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health.interval_ms)
    }

    /// The gateway's health-check address: configured, or the first host
    /// of the first pod CIDR.
    pub fn health_check_ip(&self) -> IpAddr {
        self.health.ip.unwrap_or_else(|| {
            let first = self.cluster.pod_cidrs[0];
            first.hosts().next().unwrap_or(first.addr())
        })
    }

    /// The node's address, known once the configuration is complete
    /// (checked at parse time, or found by Kubernetes mode at start).
    pub fn node_ip(&self) -> IpAddr {
        self.node
            .ip
            .expect("the node address is resolved before the roles start")
    }

    /// The cluster set's PSK, from the file when one is named. Its bytes
    /// as they are: a `subctl` broker's PSK is raw random bytes.
    pub fn psk(&self) -> Result<Vec<u8>, ConfigError> {
        match &self.cable.psk_file {
            Some(path) => std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            }),
            None => Ok(self.cable.psk.clone().into_bytes()),
        }
    }

    /// The subnets this cluster brings to the cluster set.
    pub fn subnets(&self) -> Vec<IpNet> {
        self.cluster
            .pod_cidrs
            .iter()
            .chain(&self.cluster.service_cidrs)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
cluster_id: cluster-a
node: { name: a-gw, ip: 192.0.2.10, gateway: true }
cluster: { pod_cidrs: [10.1.0.0/16], service_cidrs: [10.101.0.0/16] }
broker: dir:/tmp/broker
";

    #[test]
    fn minimal_config_takes_defaults() {
        let config = AgentConfig::parse(MINIMAL).unwrap();
        assert_eq!(config.cable.udp_port, 4500);
        assert_eq!(config.health.interval_ms, 1000);
        assert_eq!(config.health.max_lost, 5);
        assert_eq!(config.metrics_address.port(), 9898);
        assert_eq!(
            config.health_check_ip(),
            "10.1.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(config.subnets().len(), 2);
    }

    fn error_of(text: &str) -> (String, String) {
        AgentConfig::parse(text).expect_err("expected a refusal")
    }

    #[test]
    fn wrong_fields_are_reported_with_their_path() {
        let (field, _) = error_of(&MINIMAL.replace("ip: 192.0.2.10", "ip: not-an-ip"));
        assert_eq!(field, "node.ip");
        let (field, _) = error_of(&format!("{MINIMAL}cable: {{ udp_port: 70000 }}\n"));
        assert_eq!(field, "cable.udp_port");
        let (field, message) = error_of(&format!("{MINIMAL}bogus: 1\n"));
        assert!(message.contains("bogus"), "{field}: {message}");
        let (field, _) =
            error_of(&MINIMAL.replace("pod_cidrs: [10.1.0.0/16]", "pod_cidrs: [10.1.0.0/33]"));
        assert_eq!(field, "cluster.pod_cidrs[0]");
        let (field, _) = error_of(&MINIMAL.replace("broker: dir:/tmp/broker", "broker: ftp:x"));
        assert_eq!(field, "broker");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let (field, _) = error_of(&MINIMAL.replace("cluster-a", "Cluster_A"));
        assert_eq!(field, "cluster_id");
        let (field, _) = error_of(&MINIMAL.replace("10.101.0.0/16", "10.1.128.0/17"));
        assert_eq!(field, "cluster.pod_cidrs");
        let (field, _) = error_of(&format!("{MINIMAL}health: {{ ip: 192.0.2.1 }}\n"));
        assert_eq!(field, "health.ip");
        let (field, _) = error_of(&MINIMAL.replace("pod_cidrs: [10.1.0.0/16]", "pod_cidrs: []"));
        assert_eq!(field, "cluster.pod_cidrs");
        let (field, _) = error_of(&MINIMAL.replace(", ip: 192.0.2.10", ""));
        assert_eq!(field, "node.ip");
        let (field, _) = error_of(&MINIMAL.replace("dir:/tmp/broker", "kube:/etc/kubeconfig"));
        assert_eq!(field, "broker");
    }

    #[test]
    fn a_joined_cluster_brings_its_global_cidr() {
        let kube = MINIMAL.replace("dir:/tmp/broker", "kube:/etc/kubeconfig") + "kubernetes: {}\n";
        let (field, _) = error_of(&format!("{kube}globalnet: {{ enabled: true }}\n"));
        assert_eq!(field, "globalnet.global_cidr");
        let (field, _) = error_of(&format!(
            "{kube}globalnet: {{ enabled: true, global_cidr: 242.1.0.0/24 }}\n"
        ));
        assert_eq!(field, "globalnet.global_cidr");
        let config = AgentConfig::parse(&format!(
            "{kube}globalnet: {{ enabled: true, global_cidr: 242.1.0.0/16 }}\n"
        ))
        .unwrap();
        assert_eq!(
            config.globalnet.global_cidr,
            Some("242.1.0.0/16".parse().unwrap())
        );
    }

    #[test]
    fn kubernetes_mode_needs_no_node_section() {
        let text = "
cluster_id: cluster-a
cluster: { pod_cidrs: [10.1.0.0/16] }
broker: kube:/etc/strait/broker/kubeconfig
cable: { psk_file: /etc/strait/broker/psk }
kubernetes: { namespace: strait }
";
        let config = AgentConfig::parse(text).unwrap();
        let kubernetes = config.kubernetes.unwrap();
        assert_eq!(kubernetes.lease, LeaseTimes::default());
        assert_eq!(config.node.ip, None);
        let (field, _) = error_of(&format!(
            "{}  lease: {{ duration_ms: 100, renew_deadline_ms: 200 }}\n",
            text.replace("kubernetes: { namespace: strait }", "kubernetes:")
        ));
        assert_eq!(field, "kubernetes.lease");
    }

    #[test]
    fn globalnet_takes_submariners_defaults() {
        let config =
            AgentConfig::parse(&format!("{MINIMAL}globalnet: {{ enabled: true }}\n")).unwrap();
        let g = &config.globalnet;
        assert_eq!(g.cidr_range.to_string(), "242.0.0.0/8");
        assert_eq!((g.cluster_size, g.egress_ips), (65_536, 8));
        assert_eq!(g.exports_dir, None);
        assert!(!AgentConfig::parse(MINIMAL).unwrap().globalnet.enabled);
    }

    #[test]
    fn bad_globalnet_settings_are_refused_with_a_reason() {
        let with = |g: &str| format!("{MINIMAL}globalnet: {{ enabled: true, {g} }}\n");
        let (field, message) = error_of(&with("cluster_size: 16, egress_ips: 15"));
        assert_eq!(field, "globalnet.egress_ips");
        assert!(message.contains("does not fit"), "{message}");
        let (field, _) = error_of(&format!(
            "{}health: {{ ip: 10.1.0.1 }}\n",
            with("cluster_size: 256")
        ));
        assert_eq!(field, "health.ip");
        let (field, _) = error_of(&with("cluster_size: 1000"));
        assert_eq!(field, "globalnet.cluster_size");
        let (field, _) = error_of(&with("cidr_range: 242.0.0.0/16, cluster_size: 131072"));
        assert_eq!(field, "globalnet.cluster_size");
        let (field, message) = error_of(&with("cidr_range: 10.0.0.0/8"));
        assert_eq!(field, "globalnet.cidr_range");
        assert!(
            message.contains("overlaps this cluster's 10.1.0.0/16"),
            "{message}"
        );
        // Off, the same settings are not checked.
        assert!(AgentConfig::parse(&format!(
            "{MINIMAL}globalnet: {{ cidr_range: 10.0.0.0/8 }}\n"
        ))
        .is_ok());
    }
}
