//! Routes in Strait's own routing table: what should be there and what to
//! change to get there.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::gateway::GatewayPlan;

/// One route of Strait's table, as far as Strait sets it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub destination: IpNet,
    pub device: String,
    /// Next hop on the device (set on-link), if not directly reachable.
    pub via: Option<IpAddr>,
    /// Source for traffic the node itself starts: an address inside this
    /// cluster's subnets, which the remote gateway accepts.
    pub source: Option<IpAddr>,
}

/// A gateway routes every connected remote subnet into its tunnel.
pub fn gateway_routes(plan: &GatewayPlan, tunnel: &str, source: IpAddr) -> BTreeSet<Route> {
    plan.peers
        .values()
        .flat_map(|peer| peer.allowed_ips())
        .map(|destination| Route {
            destination,
            device: tunnel.to_string(),
            via: None,
            source: (destination.addr().is_ipv4() == source.is_ipv4()).then_some(source),
        })
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub add: Vec<Route>,
    pub remove: Vec<Route>,
}

impl RouteChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

pub fn route_changes(observed: &BTreeSet<Route>, desired: &BTreeSet<Route>) -> RouteChanges {
    RouteChanges {
        add: desired.difference(observed).cloned().collect(),
        remove: observed.difference(desired).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str) -> Route {
        Route {
            destination: dst.parse().unwrap(),
            device: "strait-wg".into(),
            via: None,
            source: Some("10.1.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn changes_add_missing_and_remove_stale() {
        let observed = BTreeSet::from([route("10.2.0.0/16"), route("10.9.0.0/16")]);
        let desired = BTreeSet::from([route("10.2.0.0/16"), route("10.3.0.0/16")]);
        let changes = route_changes(&observed, &desired);
        assert_eq!(changes.add, vec![route("10.3.0.0/16")]);
        assert_eq!(changes.remove, vec![route("10.9.0.0/16")]);
        assert!(route_changes(&desired, &desired).is_empty());
    }
}
