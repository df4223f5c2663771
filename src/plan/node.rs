//! The route agent's plan for one node: how its pods and host processes
//! reach remote clusters through the cluster's active gateway.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use super::gateway::GatewayPlan;
use super::routes::Route;
use crate::broker::types::{Endpoint, EndpointSpec};
use crate::net::vxlan::{overlay_address, VXLAN_IF};

/// What a node knows of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub cluster_id: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// An address of this node inside the cluster's pod CIDRs (its CNI
    /// interface's): the source of host-network traffic to remote
    /// clusters, since remote gateways accept only cluster subnets.
    pub cni_ip: Option<IpAddr>,
}

/// The node's routes and where its VXLAN sends unknown frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// The active gateway's node address, unless this node is it.
    pub vxlan_destination: Option<IpAddr>,
    pub routes: BTreeSet<Route>,
}

/// The cluster's active gateway: the newest endpoint of this cluster.
pub fn active_gateway<'a>(cluster_id: &str, endpoints: &'a [Endpoint]) -> Option<&'a EndpointSpec> {
    endpoints
        .iter()
        .filter(|e| e.body.spec.cluster_id == cluster_id)
        .max_by_key(|e| {
            (
                e.metadata.creation_timestamp.clone(),
                e.metadata.name.clone(),
            )
        })
        .map(|e| &e.body.spec)
}

/// Whether `gateway` (an endpoint of this cluster) is this node's.
pub fn is_this_node(facts: &NodeFacts, gateway: &EndpointSpec) -> bool {
    gateway.hostname == facts.name || gateway.private_ip.parse::<Ipv4Addr>() == Ok(facts.ip)
}

/// A node that is not the active gateway sends remote-bound traffic over
/// VXLAN to the gateway; the gateway itself routes into the tunnel (see
/// [`super::routes::gateway_routes`]) and needs nothing here.
pub fn node_plan(
    facts: &NodeFacts,
    active: Option<&EndpointSpec>,
    connections: &GatewayPlan,
) -> NodePlan {
    let Some(gateway) = active else {
        return NodePlan::default();
    };
    let Ok(gateway_ip) = gateway.private_ip.parse::<Ipv4Addr>() else {
        return NodePlan::default();
    };
    if is_this_node(facts, gateway) {
        return NodePlan::default();
    }
    let via = IpAddr::V4(overlay_address(gateway_ip));
    let routes = connections
        .peers
        .values()
        .flat_map(|peer| peer.allowed_ips())
        .filter(|destination| destination.addr().is_ipv4())
        .map(|destination| Route {
            destination,
            device: VXLAN_IF.to_string(),
            via: Some(via),
            source: facts.cni_ip.filter(IpAddr::is_ipv4),
        })
        .collect();
    NodePlan {
        vxlan_destination: Some(IpAddr::V4(gateway_ip)),
        routes,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::broker::types::{Spec, PUBLIC_KEY, WIREGUARD_BACKEND};
    use crate::plan::gateway::{plan, LocalFacts};
    use crate::tunnel::Key;

    fn endpoint(cluster: &str, host: &str, ip: &str, subnet: &str, created: &str) -> Endpoint {
        let spec = EndpointSpec {
            cluster_id: cluster.into(),
            cable_name: format!("cable-{host}"),
            hostname: host.into(),
            private_ip: ip.into(),
            subnets: vec![subnet.into()],
            backend: WIREGUARD_BACKEND.into(),
            backend_config: BTreeMap::from([(
                PUBLIC_KEY.into(),
                Key([host.len() as u8; 32]).to_base64(),
            )]),
            ..EndpointSpec::default()
        };
        Endpoint::new(spec.object_name(), Spec { spec }, created.into())
    }

    fn facts(name: &str, ip: [u8; 4]) -> NodeFacts {
        NodeFacts {
            cluster_id: "a".into(),
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            cni_ip: Some("10.1.2.1".parse().unwrap()),
        }
    }

    fn world() -> Vec<Endpoint> {
        vec![
            endpoint(
                "a",
                "a-gw",
                "172.16.1.10",
                "10.1.0.0/16",
                "2026-01-01T00:00:00Z",
            ),
            endpoint(
                "b",
                "b-gw",
                "172.16.2.10",
                "10.2.0.0/16",
                "2026-01-01T00:00:00Z",
            ),
        ]
    }

    fn connections(endpoints: &[Endpoint]) -> GatewayPlan {
        plan(
            &LocalFacts {
                cluster_id: "a".into(),
                subnets: vec!["10.1.0.0/16".parse().unwrap()],
            },
            endpoints,
        )
    }

    #[test]
    fn non_gateway_node_routes_remote_subnets_to_the_gateway_over_vxlan() {
        let endpoints = world();
        let active = active_gateway("a", &endpoints);
        let plan = node_plan(
            &facts("a-n2", [172, 16, 1, 12]),
            active,
            &connections(&endpoints),
        );
        assert_eq!(plan.vxlan_destination, Some("172.16.1.10".parse().unwrap()));
        let routes: Vec<_> = plan.routes.iter().collect();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].destination, "10.2.0.0/16".parse().unwrap());
        assert_eq!(routes[0].via, Some("240.16.1.10".parse().unwrap()));
        assert_eq!(routes[0].device, VXLAN_IF);
        assert_eq!(routes[0].source, Some("10.1.2.1".parse().unwrap()));
    }

    #[test]
    fn the_gateway_node_needs_no_vxlan_routes() {
        let endpoints = world();
        let active = active_gateway("a", &endpoints);
        let plan = node_plan(
            &facts("a-gw", [172, 16, 1, 10]),
            active,
            &connections(&endpoints),
        );
        assert_eq!(plan, NodePlan::default());
    }

    #[test]
    fn a_node_knows_its_own_endpoint_by_name_or_address() {
        let endpoints = world();
        let gw = active_gateway("a", &endpoints).unwrap();
        assert!(is_this_node(&facts("a-gw", [172, 16, 1, 99]), gw));
        assert!(is_this_node(&facts("renamed", [172, 16, 1, 10]), gw));
        assert!(!is_this_node(&facts("a-n2", [172, 16, 1, 12]), gw));
    }

    #[test]
    fn a_newer_gateway_takes_over() {
        let mut endpoints = world();
        endpoints.push(endpoint(
            "a",
            "a-n3",
            "172.16.1.13",
            "10.1.0.0/16",
            "2026-01-02T00:00:00Z",
        ));
        let active = active_gateway("a", &endpoints);
        assert_eq!(active.unwrap().hostname, "a-n3");
        let plan = node_plan(
            &facts("a-n2", [172, 16, 1, 12]),
            active,
            &connections(&endpoints),
        );
        assert_eq!(plan.vxlan_destination, Some("172.16.1.13".parse().unwrap()));
        assert!(plan
            .routes
            .iter()
            .all(|r| r.via == Some("240.16.1.13".parse().unwrap())));
    }

    #[test]
    fn no_gateway_no_routes_and_the_same_input_gives_the_same_plan() {
        let endpoints = vec![endpoint("b", "b-gw", "172.16.2.10", "10.2.0.0/16", "t")];
        let plan = node_plan(
            &facts("a-n2", [172, 16, 1, 12]),
            active_gateway("a", &endpoints),
            &connections(&endpoints),
        );
        assert_eq!(plan, NodePlan::default());
        let endpoints = world();
        let first = node_plan(
            &facts("a-n2", [172, 16, 1, 12]),
            active_gateway("a", &endpoints),
            &connections(&endpoints),
        );
        let again = node_plan(
            &facts("a-n2", [172, 16, 1, 12]),
            active_gateway("a", &endpoints),
            &connections(&endpoints),
        );
        assert_eq!(first, again);
    }
}
