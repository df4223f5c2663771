//! `strait agent --config FILE`: the node agent's YAML configuration.
//! Every field has a default where one exists; a wrong field is reported
//! with its path and the agent does not start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerLocation;
use crate::plan::globalnet;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This cluster's id: a DNS label, unique in the cluster set.
    pub cluster_id: String,
    pub node: NodeConfig,
    pub cluster: ClusterNetworks,
    /// Where the cluster set meets: `dir:PATH`.
    pub broker: BrokerLocation,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// The node's address; a gateway's endpoint `private_ip`.
    pub ip: IpAddr,
    /// Whether this node may be the cluster's gateway.
    #[serde(default)]
    pub gateway: bool,
    /// The address other clusters reach this gateway at, when NAT puts it
    /// elsewhere than `ip`.
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
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
        if self.node.name.is_empty() {
            return fail("node.name", "must not be empty".into());
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

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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
