//! Kubernetes mode: the local cluster's API tells the agent which node it
//! is on, that node's address, and whether it may be the gateway.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::config::{KubernetesConfig, NodeConfig};
use super::AgentError;
use crate::broker::kube::Namespace;

/// The node label that makes a node a gateway candidate (Submariner's).
pub const GATEWAY_LABEL: &str = "submariner.io/gateway";
/// The Lease the gateway candidates of a cluster elect the active one by.
pub const GATEWAY_LEASE: &str = "strait-gateway";
/// Where the node's name comes from (the DaemonSet sets it from
/// `spec.nodeName`).
pub const NODE_NAME_ENV: &str = "NODE_NAME";

fn failed(what: String) -> impl FnOnce(String) -> AgentError {
    move |message| AgentError::Kubernetes { what, message }
}

/// A client of the local cluster: from the configured kubeconfig, or the
/// pod's service account.
pub async fn connect_local(config: &KubernetesConfig) -> Result<Namespace, AgentError> {
    let client = match &config.kubeconfig {
        Some(path) => crate::broker::kube::connect(path).await?.client,
        None => {
            let config = kube::Config::incluster()
                .map_err(|e| failed("the in-cluster API configuration".into())(e.to_string()))?;
            kube::Client::try_from(config)
                .map_err(|e| failed("a client of the local API".into())(e.to_string()))?
        }
    };
    Ok(Namespace {
        client,
        name: config.namespace.clone(),
    })
}

/// Fills in the node's name (from `$NODE_NAME` unless configured), its
/// address, its public address and its gateway candidacy from its Node
/// object.
pub async fn resolve_node(local: &Namespace, node: &mut NodeConfig) -> Result<(), AgentError> {
    if node.name.is_empty() {
        node.name = std::env::var(NODE_NAME_ENV).map_err(|_| {
            failed("this node's name".into())(format!(
                "node.name is not configured and ${NODE_NAME_ENV} is not set"
            ))
        })?;
    }
    let object = Api::<Node>::all(local.client.clone())
        .get(&node.name)
        .await
        .map_err(|e| failed(format!("Node {}", node.name))(e.to_string()))?;
    let facts = node_facts(&object).map_err(failed(format!("Node {}", node.name)))?;
    node.ip = node.ip.or(Some(facts.ip));
    node.public_ip = node.public_ip.or(facts.public_ip);
    node.gateway = facts.gateway_candidate;
    tracing::info!(node = %node.name, ip = %facts.ip, public_ip = ?node.public_ip, gateway_candidate = facts.gateway_candidate, "node found");
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct NodeFacts {
    ip: IpAddr,
    /// Where other clusters reach this node, if elsewhere than `ip`.
    public_ip: Option<IpAddr>,
    gateway_candidate: bool,
}

/// The node's InternalIP, its ExternalIP (the address other clusters
/// reach a gateway at, where the node has one), and whether it is
/// labelled a gateway candidate.
fn node_facts(node: &Node) -> Result<NodeFacts, String> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    // An IPv4 address first: the VXLAN overlay is IPv4.
    let address_of = |kind: &str| {
        let all = addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse::<IpAddr>().ok());
        all.clone()
            .find(IpAddr::is_ipv4)
            .or_else(|| all.clone().next())
    };
    let ip = address_of("InternalIP").ok_or("has no InternalIP address in status.addresses")?;
    let public_ip = address_of("ExternalIP");
    let gateway_candidate = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GATEWAY_LABEL))
        .is_some_and(|v| v == "true");
    Ok(NodeFacts {
        ip,
        public_ip,
        gateway_candidate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use std::collections::BTreeMap;

    fn node(addresses: &[(&str, &str)], labels: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        node.status = Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        node
    }

    #[test]
    fn the_internal_ipv4_address_and_the_label_decide() {
        let facts = node_facts(&node(
            &[
                ("Hostname", "gw"),
                ("InternalIP", "2001:db8::1"),
                ("InternalIP", "192.0.2.10"),
                ("ExternalIP", "198.51.100.1"),
            ],
            &[(GATEWAY_LABEL, "true")],
        ))
        .unwrap();
        assert_eq!(facts.ip, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(facts.public_ip, Some("198.51.100.1".parse().unwrap()));
        assert!(facts.gateway_candidate);
        let facts = node_facts(&node(
            &[("InternalIP", "192.0.2.11")],
            &[(GATEWAY_LABEL, "false")],
        ))
        .unwrap();
        assert!(!facts.gateway_candidate);
        assert_eq!(facts.public_ip, None);
    }

    #[test]
    fn a_node_without_an_internal_address_is_refused() {
        let err = node_facts(&node(&[("ExternalIP", "198.51.100.1")], &[])).unwrap_err();
        assert!(err.contains("InternalIP"), "{err}");
    }
}
