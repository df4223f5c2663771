//! The gateway role: the in-process WireGuard device, its peers and routes
//! to the other clusters, and what it tells the broker and Prometheus.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::config::AgentConfig;
use super::health::{Health, Pinger, Status};
use super::AgentError;
use crate::broker::types::{
    Cluster, ClusterSpec, Connection, Endpoint, EndpointSpec, Gateway, GatewayStatus, Spec,
    Status as StatusBody, PUBLIC_KEY, UDP_PORT, WIREGUARD_BACKEND,
};
use crate::broker::{Broker, Skipped, Snapshot};
use crate::metrics::Metrics;
use crate::net::Netlink;
use crate::plan::gateway::{peer_changes, GatewayPlan, RemotePeer};
use crate::plan::globalnet::SliceLayout;
use crate::plan::routes::{gateway_routes, Route};
use crate::tunnel::uapi::{PeerReport, SetRequest};
use crate::tunnel::uapi_socket::UapiSocket;
use crate::tunnel::{Device, Key};

/// The gateway's WireGuard interface.
pub const TUNNEL_IF: &str = "strait-wg";
/// 1500-byte underlay less WireGuard over IPv6 (80 bytes).
pub const TUNNEL_MTU: u32 = 1420;
/// A peer without a health-check address counts as connected while its
/// last handshake is younger than this (WireGuard rekeys every 2 minutes).
const HANDSHAKE_FRESHNESS: Duration = Duration::from_secs(180);

pub struct GatewayRole<B: Broker> {
    config: AgentConfig,
    broker: Arc<B>,
    device: Arc<Device>,
    _uapi: Arc<UapiSocket>,
    pinger: Arc<Pinger>,
    metrics: Arc<Metrics>,
    psk: Key,
    local_endpoint: EndpointSpec,
    /// The probe source and answer address, on the tunnel device.
    health_ip: IpAddr,
    /// With globalnet, this cluster's slice of the global range.
    global_cidr: Option<Ipv4Net>,
    /// When this gateway started: its status object's creation time.
    started: String,
    reported_skips: HashSet<Skipped>,
    reported_refusals: HashSet<(String, String)>,
    /// Label values of each remote cluster's metrics, to remove them.
    metric_labels: BTreeMap<String, Vec<String>>,
    elected: bool,
}

/// Reads the private key file (base64, as `wg genkey` writes it), or
/// creates it with a fresh key so that restarts keep the same identity.
pub fn load_or_create_key(path: &std::path::Path) -> Result<Key, AgentError> {
    let key_error = |source| AgentError::Key {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Key::from_base64(&text).map_err(|e| key_error(std::io::Error::other(e.to_string())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom").map_err(key_error)?,
                &mut key,
            )
            .map_err(key_error)?;
            let key = Key(key);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(key_error)?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(key_error)?;
            std::io::Write::write_all(&mut file, format!("{}\n", key.to_base64()).as_bytes())
                .map_err(key_error)?;
            Ok(key)
        }
        Err(e) => Err(key_error(e)),
    }
}

/// The gateway's health-check address: a global one with globalnet.
fn health_check_ip(config: &AgentConfig, global: Option<SliceLayout>) -> IpAddr {
    global
        .map(|g| IpAddr::V4(g.health_check_ip()))
        .unwrap_or_else(|| config.health_check_ip())
}

/// What this node publishes as its cluster's endpoint when it is the
/// gateway: with globalnet the cluster's global CIDR stands for its own.
fn local_endpoint(
    config: &AgentConfig,
    private_key: &Key,
    global: Option<SliceLayout>,
) -> EndpointSpec {
    let node_ip = config.node_ip();
    let subnets = match global {
        Some(g) => vec![g.cidr.to_string()],
        None => config.subnets().iter().map(ToString::to_string).collect(),
    };
    EndpointSpec {
        cluster_id: config.cluster_id.clone(),
        cable_name: format!(
            "strait-cable-{}-{}",
            config.cluster_id,
            node_ip.to_string().replace(['.', ':'], "-")
        ),
        health_check_ip: health_check_ip(config, global).to_string(),
        hostname: config.node.name.clone(),
        subnets,
        private_ip: node_ip.to_string(),
        public_ip: config
            .node
            .public_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        nat_enabled: false,
        backend: WIREGUARD_BACKEND.into(),
        backend_config: BTreeMap::from([
            (PUBLIC_KEY.into(), private_key.public_key().to_base64()),
            (UDP_PORT.into(), config.cable.udp_port.to_string()),
        ]),
    }
}

fn gateway_name(config: &AgentConfig) -> String {
    format!("{}-{}", config.cluster_id, config.node.name)
}

/// Says that this gateway candidate stands by: a `Gateway` with
/// `haStatus: passive` and the endpoint it would publish.
pub async fn publish_passive<B: Broker>(
    config: &AgentConfig,
    broker: &B,
    global: Option<SliceLayout>,
) -> Result<(), AgentError> {
    let private_key = load_or_create_key(&config.cable.private_key_file)?;
    let gateway = Gateway::new(
        gateway_name(config),
        StatusBody {
            status: GatewayStatus {
                version: env!("CARGO_PKG_VERSION").into(),
                ha_status: "passive".into(),
                local_endpoint: local_endpoint(config, &private_key, global),
                status_failure: String::new(),
                connections: Vec::new(),
            },
        },
        now_rfc3339(),
    );
    broker.publish(&gateway).await?;
    Ok(())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl<B: Broker> GatewayRole<B> {
    /// Brings up the tunnel device; every reconcile then publishes this
    /// cluster and its endpoint. An `elected` gateway (Kubernetes mode)
    /// is the cluster's only active one and removes endpoints its
    /// cluster's earlier gateways left behind. With globalnet (`global`),
    /// the endpoint announces the cluster's global CIDR instead of its
    /// own, and the health check uses a global address.
    pub async fn start(
        config: AgentConfig,
        broker: Arc<B>,
        netlink: Netlink,
        metrics: Arc<Metrics>,
        elected: bool,
        global: Option<SliceLayout>,
    ) -> Result<Self, AgentError> {
        crate::net::sysctl::ensure_ipv4_forwarding()?;
        let private_key = load_or_create_key(&config.cable.private_key_file)?;
        let device = Arc::new(Device::create(TUNNEL_IF)?);
        device.set(&SetRequest {
            private_key: Some(private_key),
            listen_port: Some(config.cable.udp_port),
            ..SetRequest::default()
        })?;
        let uapi = Arc::new(UapiSocket::bind(&config.state_dir, TUNNEL_IF)?);
        let serving = (uapi.clone(), device.clone());
        tokio::spawn(async move {
            if let Err(e) = serving.0.serve(serving.1).await {
                tracing::error!(error = %e, "tunnel UAPI socket failed");
            }
        });

        let index = netlink.ensure_link_up(TUNNEL_IF, TUNNEL_MTU).await?;
        let health_ip = health_check_ip(&config, global);
        netlink.ensure_host_address(index, health_ip).await?;
        let IpAddr::V4(health_v4) = health_ip else {
            return Err(AgentError::Unsupported(
                "an IPv6 health-check address".into(),
            ));
        };
        let pinger = Pinger::new(health_v4).map_err(|source| AgentError::Health { source })?;
        let receiver = pinger.clone();
        std::thread::Builder::new()
            .name("health-probes".into())
            .spawn(move || receiver.receive())
            .map_err(|source| AgentError::Health { source })?;

        let local_endpoint = local_endpoint(&config, &private_key, global);
        let psk = Key(Sha256::digest(config.psk()?).into());
        Ok(GatewayRole {
            config,
            broker,
            device,
            _uapi: uapi,
            pinger,
            metrics,
            psk,
            local_endpoint,
            health_ip,
            global_cidr: global.map(|g| g.cidr),
            started: now_rfc3339(),
            reported_skips: HashSet::new(),
            reported_refusals: HashSet::new(),
            metric_labels: BTreeMap::new(),
            elected,
        })
    }

    async fn publish_identity(&self, snapshot: &Snapshot) -> Result<(), AgentError> {
        let config = &self.config;
        let strings = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect();
        let cluster = Cluster::new(
            config.cluster_id.clone(),
            Spec {
                spec: ClusterSpec {
                    cluster_id: config.cluster_id.clone(),
                    color_codes: vec!["blue".into()],
                    service_cidr: strings(&config.cluster.service_cidrs),
                    cluster_cidr: strings(&config.cluster.pod_cidrs),
                    global_cidr: self.global_cidr.iter().map(ToString::to_string).collect(),
                },
            },
            now_rfc3339(),
        );
        self.publish_keeping_creation(cluster).await?;
        let endpoint = Endpoint::new(
            self.local_endpoint.object_name(),
            Spec {
                spec: self.local_endpoint.clone(),
            },
            now_rfc3339(),
        );
        self.publish_keeping_creation(endpoint).await?;
        if self.elected {
            self.withdraw_stale_endpoints(snapshot).await?;
        }
        Ok(())
    }

    /// Endpoints of this cluster other than ours: left by gateways that
    /// lost the election or crashed.
    async fn withdraw_stale_endpoints(&self, snapshot: &Snapshot) -> Result<(), AgentError> {
        let ours = self.local_endpoint.object_name();
        for stale in snapshot
            .endpoints
            .iter()
            .filter(|e| e.cluster_id() == self.config.cluster_id && e.metadata.name != ours)
        {
            tracing::info!(endpoint = %stale.metadata.name, "removing an endpoint of an earlier gateway");
            self.broker
                .withdraw::<Spec<EndpointSpec>>(&stale.metadata.name)
                .await?;
        }
        Ok(())
    }

    /// Publishes `object`, keeping the creation time of the copy already
    /// in the broker so that a restart does not make it "newer".
    async fn publish_keeping_creation<S>(
        &self,
        mut object: crate::broker::types::Object<S>,
    ) -> Result<(), AgentError>
    where
        S: crate::broker::types::Kind + Send + Sync,
    {
        if let Some(existing) = self.broker.get::<S>(&object.metadata.name).await? {
            object.metadata.creation_timestamp = existing.metadata.creation_timestamp;
        }
        self.broker.publish(&object).await?;
        Ok(())
    }

    /// One pass over the gateway's part: peers, health targets, status.
    pub async fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        plan: &GatewayPlan,
    ) -> Result<(), AgentError> {
        self.report_skips(&snapshot.skipped);
        // Each refusal is logged once while it lasts, not every second.
        let refusals: HashSet<(String, String)> = plan
            .refused
            .iter()
            .map(|r| (r.endpoint.object_name(), r.reason.clone()))
            .collect();
        for (endpoint, reason) in refusals.difference(&self.reported_refusals) {
            tracing::warn!(%endpoint, %reason, "not connecting");
        }
        self.reported_refusals = refusals;

        let current = self.device.config();
        if let Some(changes) = peer_changes(&current, plan, self.psk) {
            tracing::info!(peers = changes.peers.len(), "updating tunnel peers");
            self.device.set(&changes)?;
        }

        let targets: Vec<_> = plan
            .peers
            .values()
            .filter_map(|p| match p.health_check_ip {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            })
            .collect();
        if self.pinger.set_targets(&targets) {
            self.probe();
        }

        // A broker that cannot be written to stops nothing here: the
        // tunnel keeps what it has and the next pass writes again.
        if let Err(e) = self.publish_identity(snapshot).await {
            tracing::warn!(error = %e, "publishing this cluster and its endpoint failed");
        }
        if let Err(e) = self.publish_status(plan).await {
            tracing::warn!(error = %e, "publishing the gateway status failed");
        }
        self.metrics.sync_iterations.inc();
        Ok(())
    }

    /// The routes into the tunnel for every connected remote subnet.
    pub fn routes(&self, plan: &GatewayPlan) -> BTreeSet<Route> {
        gateway_routes(plan, TUNNEL_IF, self.health_ip)
    }

    /// Stops the health checker's thread; the device goes when dropped.
    /// Its status goes from the broker too: a stopped gateway has no live
    /// connections. The endpoint stays, so that peers keep their
    /// configuration across a restart.
    pub async fn stop(&self) {
        self.pinger.stop();
        self.device.stop();
        if let Err(e) = self
            .broker
            .withdraw::<StatusBody<GatewayStatus>>(&self.gateway_name())
            .await
        {
            tracing::warn!(error = %e, "could not withdraw the gateway status");
        }
    }

    fn gateway_name(&self) -> String {
        gateway_name(&self.config)
    }

    pub fn probe(&self) {
        self.pinger.probe_all(self.config.health.max_lost);
    }

    fn report_skips(&mut self, skipped: &[Skipped]) {
        self.metrics
            .broker_objects_skipped
            .set(skipped.len() as i64);
        for skip in skipped {
            if !self.reported_skips.contains(skip) {
                tracing::warn!(source = %skip.source, reason = %skip.reason, "broker object skipped");
            }
        }
        self.reported_skips = skipped.iter().cloned().collect();
    }

    fn connection(&self, peer: &RemotePeer, stats: Option<&PeerReport>) -> (Connection, Health) {
        let health = match peer.health_check_ip {
            Some(IpAddr::V4(ip)) => self
                .pinger
                .health
                .lock()
                .get(&ip)
                .cloned()
                .unwrap_or_default(),
            _ => Health::default(),
        };
        let (status, message) = match peer.health_check_ip {
            Some(ip @ IpAddr::V4(_)) => (health.status(), health.message(ip)),
            _ => {
                let fresh = stats
                    .and_then(|s| s.last_handshake)
                    .and_then(|t| {
                        SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH + t)
                            .ok()
                    })
                    .is_some_and(|age| age < HANDSHAKE_FRESHNESS);
                if fresh {
                    (Status::Connected, String::new())
                } else {
                    (Status::Connecting, "no recent WireGuard handshake".into())
                }
            }
        };
        let connection = Connection {
            status: status.as_str().into(),
            status_message: message,
            endpoint: peer.endpoint.clone(),
            using_ip: peer.address.ip().to_string(),
            using_nat: false,
            latency_rtt: health.latency(),
        };
        (connection, health)
    }

    async fn publish_status(&mut self, plan: &GatewayPlan) -> Result<(), AgentError> {
        let report = self.device.report();
        let mut connections = Vec::new();
        let mut seen = BTreeSet::new();
        for (cluster, peer) in &plan.peers {
            let stats = report
                .peers
                .iter()
                .find(|p| p.public_key == peer.public_key);
            let (connection, health) = self.connection(peer, stats);
            self.update_metrics(cluster, &connection, &health, stats);
            seen.insert(cluster.clone());
            connections.push(connection);
        }
        for refused in &plan.refused {
            connections.push(Connection {
                status: Status::Error.as_str().into(),
                status_message: refused.reason.clone(),
                endpoint: refused.endpoint.clone(),
                using_ip: String::new(),
                using_nat: false,
                latency_rtt: None,
            });
        }
        let gone: Vec<String> = self
            .metric_labels
            .keys()
            .filter(|c| !seen.contains(*c))
            .cloned()
            .collect();
        for cluster in gone {
            self.remove_metrics(&cluster);
        }

        let gateway = Gateway::new(
            self.gateway_name(),
            StatusBody {
                status: GatewayStatus {
                    version: env!("CARGO_PKG_VERSION").into(),
                    ha_status: "active".into(),
                    local_endpoint: self.local_endpoint.clone(),
                    status_failure: String::new(),
                    connections,
                },
            },
            self.started.clone(),
        );
        self.broker.publish(&gateway).await?;
        Ok(())
    }

    fn labels_for(&self, connection: &Connection) -> Vec<String> {
        vec![
            WIREGUARD_BACKEND.to_string(),
            self.config.cluster_id.clone(),
            self.config.node.name.clone(),
            self.local_endpoint.private_ip.clone(),
            connection.endpoint.cluster_id.clone(),
            connection.endpoint.hostname.clone(),
            connection.using_ip.clone(),
        ]
    }

    fn update_metrics(
        &mut self,
        cluster: &str,
        connection: &Connection,
        health: &Health,
        stats: Option<&PeerReport>,
    ) {
        let labels = self.labels_for(connection);
        if self
            .metric_labels
            .get(cluster)
            .is_some_and(|old| *old != labels)
        {
            self.remove_metrics(cluster);
        }
        let values: Vec<&str> = labels.iter().map(String::as_str).collect();
        for status in [Status::Connecting, Status::Connected, Status::Error] {
            let mut with_status = values.clone();
            with_status.push(status.as_str());
            let value = if status.as_str() == connection.status {
                1.0
            } else {
                0.0
            };
            self.metrics
                .connections
                .with_label_values(&with_status)
                .set(value);
        }
        if let Some(rtt) = health.last_rtt() {
            self.metrics
                .latency_seconds
                .with_label_values(&values)
                .set(rtt.as_secs_f64());
        }
        if let Some(at) = health
            .established
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        {
            self.metrics
                .established_timestamp
                .with_label_values(&values)
                .set(at.as_secs_f64());
        }
        if let Some(stats) = stats {
            self.metrics
                .rx_bytes
                .with_label_values(&values)
                .set(stats.rx_bytes as f64);
            self.metrics
                .tx_bytes
                .with_label_values(&values)
                .set(stats.tx_bytes as f64);
        }
        self.metric_labels.insert(cluster.to_string(), labels);
    }

    fn remove_metrics(&mut self, cluster: &str) {
        let Some(labels) = self.metric_labels.remove(cluster) else {
            return;
        };
        let values: Vec<&str> = labels.iter().map(String::as_str).collect();
        for status in [Status::Connecting, Status::Connected, Status::Error] {
            let mut with_status = values.clone();
            with_status.push(status.as_str());
            let _ = self.metrics.connections.remove_label_values(&with_status);
        }
        for gauge in [
            &self.metrics.latency_seconds,
            &self.metrics.established_timestamp,
            &self.metrics.rx_bytes,
            &self.metrics.tx_bytes,
        ] {
            let _ = gauge.remove_label_values(&values);
        }
    }
}
