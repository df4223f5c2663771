//! The Prometheus registry, with the gateway metrics named and labelled as
//! Submariner's gateway exports them, so existing dashboards keep working.

use prometheus::{Encoder, GaugeVec, IntCounter, IntGauge, Opts, Registry, TextEncoder};

/// Labels of every per-connection metric, in Submariner's order.
pub const CONNECTION_LABELS: [&str; 7] = [
    "cable_driver",
    "local_cluster",
    "local_hostname",
    "local_endpoint_ip",
    "remote_cluster",
    "remote_hostname",
    "remote_endpoint_ip",
];

pub struct Metrics {
    registry: Registry,
    pub connections: GaugeVec,
    pub latency_seconds: GaugeVec,
    pub established_timestamp: GaugeVec,
    pub rx_bytes: GaugeVec,
    pub tx_bytes: GaugeVec,
    pub sync_iterations: IntCounter,
    pub broker_objects_skipped: IntGauge,
    /// Globalnet, by the cluster's global CIDR (label `cidr`), as
    /// Submariner's globalnet controller exports them.
    pub global_ip_availability: GaugeVec,
    pub global_ip_allocated: GaugeVec,
    pub global_egress_ip_allocated: GaugeVec,
    pub cluster_global_egress_ip_allocated: GaugeVec,
    pub global_ingress_ip_allocated: GaugeVec,
    pub globalnet_exports_refused: IntGauge,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let gauge = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(gauge.clone()))
        .expect("metric registered once");
    gauge
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let with_status: Vec<&str> = CONNECTION_LABELS
            .iter()
            .copied()
            .chain(["status"])
            .collect();
        let sync_iterations = IntCounter::new(
            "submariner_gateway_sync_iterations",
            "Gateway synchronization iterations",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(sync_iterations.clone()))
            .expect("metric registered once");
        let broker_objects_skipped = IntGauge::new(
            "strait_broker_objects_skipped",
            "Broker objects skipped because they are malformed or claim another owner",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(broker_objects_skipped.clone()))
            .expect("metric registered once");
        let globalnet_exports_refused = IntGauge::new(
            "strait_globalnet_exports_refused",
            "Exported services without an ingress IP: malformed, or no free global IP",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(globalnet_exports_refused.clone()))
            .expect("metric registered once");
        let cidr = ["cidr"];
        Metrics {
            global_ip_availability: gauge_vec(
                &registry,
                "submariner_global_IP_availability",
                "Count of available global IPs per CIDR",
                &cidr,
            ),
            global_ip_allocated: gauge_vec(
                &registry,
                "submariner_global_IP_allocated",
                "Count of allocated global IPs per CIDR",
                &cidr,
            ),
            global_egress_ip_allocated: gauge_vec(
                &registry,
                "submariner_global_egress_IP_allocated",
                "Count of global egress IPs allocated for pods and namespaces per CIDR",
                &cidr,
            ),
            cluster_global_egress_ip_allocated: gauge_vec(
                &registry,
                "submariner_cluster_global_egress_IP_allocated",
                "Count of cluster-wide global egress IPs allocated per CIDR",
                &cidr,
            ),
            global_ingress_ip_allocated: gauge_vec(
                &registry,
                "submariner_global_ingress_IP_allocated",
                "Count of global ingress IPs allocated for exported services per CIDR",
                &cidr,
            ),
            globalnet_exports_refused,
            connections: gauge_vec(
                &registry,
                "submariner_connections",
                "Number of connections and corresponding status by remote cluster and endpoint",
                &with_status,
            ),
            latency_seconds: gauge_vec(
                &registry,
                "submariner_connection_latency_seconds",
                "Connection latency in seconds; last RTT, by endpoint and cable driver",
                &CONNECTION_LABELS,
            ),
            established_timestamp: gauge_vec(
                &registry,
                "submariner_connection_established_timestamp",
                "Timestamp of last successful connection established, by endpoint and cable driver",
                &CONNECTION_LABELS,
            ),
            rx_bytes: gauge_vec(
                &registry,
                "submariner_gateway_rx_bytes",
                "Count of bytes received by cable driver and cable",
                &CONNECTION_LABELS,
            ),
            tx_bytes: gauge_vec(
                &registry,
                "submariner_gateway_tx_bytes",
                "Count of bytes transmitted by cable driver and cable",
                &CONNECTION_LABELS,
            ),
            sync_iterations,
            broker_objects_skipped,
            registry,
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
