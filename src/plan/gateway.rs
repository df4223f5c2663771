//! Which remote clusters a gateway connects to, and the WireGuard peers
//! that makes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::broker::types::{Endpoint, EndpointSpec, PUBLIC_KEY, UDP_PORT, WIREGUARD_BACKEND};
use crate::tunnel::config::DeviceConfig;
use crate::tunnel::uapi::{PeerChange, SetRequest};
use crate::tunnel::Key;

/// Submariner's WireGuard cable keeps NAT mappings alive every 10 s.
pub const PERSISTENT_KEEPALIVE: u16 = 10;
/// Submariner's default WireGuard port.
pub const DEFAULT_UDP_PORT: u16 = 4500;

/// What this gateway knows of itself.
#[derive(Debug, Clone)]
pub struct LocalFacts {
    pub cluster_id: String,
    pub subnets: Vec<IpNet>,
}

/// A remote cluster this gateway connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    pub endpoint: EndpointSpec,
    pub public_key: Key,
    /// Where its WireGuard listens: the public IP when it has one.
    pub address: SocketAddr,
    pub subnets: Vec<IpNet>,
    pub health_check_ip: Option<IpAddr>,
}

impl RemotePeer {
    pub fn allowed_ips(&self) -> Vec<IpNet> {
        let mut nets = self.subnets.clone();
        if let Some(ip) = self.health_check_ip {
            if !nets.iter().any(|n| n.contains(&ip)) {
                nets.push(IpNet::from(ip));
            }
        }
        nets
    }
}

/// An endpoint this gateway does not connect to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub endpoint: EndpointSpec,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayPlan {
    /// By cluster id.
    pub peers: BTreeMap<String, RemotePeer>,
    pub refused: Vec<Refused>,
}

/// Decides the connections from the broker's endpoints. Per cluster the
/// newest endpoint wins, as in Submariner; an endpoint whose subnets
/// overlap ours, or those of a cluster that was there first, is refused.
pub fn plan(local: &LocalFacts, endpoints: &[Endpoint]) -> GatewayPlan {
    let mut newest: BTreeMap<&str, &Endpoint> = BTreeMap::new();
    for endpoint in endpoints {
        let cluster = endpoint.body.spec.cluster_id.as_str();
        if cluster == local.cluster_id {
            continue;
        }
        let order = |e: &Endpoint| {
            (
                e.metadata.creation_timestamp.clone(),
                e.metadata.name.clone(),
            )
        };
        match newest.get(cluster) {
            Some(current) if order(current) >= order(endpoint) => {}
            _ => {
                newest.insert(cluster, endpoint);
            }
        }
    }
    // First come, first served when two remote clusters overlap.
    let mut candidates: Vec<&Endpoint> = newest.into_values().collect();
    candidates.sort_by_key(|e| {
        (
            e.metadata.creation_timestamp.clone(),
            e.metadata.name.clone(),
        )
    });

    let mut result = GatewayPlan::default();
    for endpoint in candidates {
        let spec = &endpoint.body.spec;
        let refuse = |reason: String| Refused {
            endpoint: spec.clone(),
            reason,
        };
        let peer = match remote_peer(spec) {
            Ok(peer) => peer,
            Err(reason) => {
                result.refused.push(refuse(reason));
                continue;
            }
        };
        if let Some((theirs, ours)) = overlap(&peer.subnets, &local.subnets) {
            result.refused.push(refuse(format!(
                "its subnet {theirs} overlaps this cluster's {ours} (overlapping clusters need globalnet)"
            )));
            continue;
        }
        let clash = result
            .peers
            .values()
            .find_map(|other| overlap(&peer.subnets, &other.subnets).map(|o| (other, o)));
        if let Some((other, (theirs, others))) = clash {
            result.refused.push(refuse(format!(
                "its subnet {theirs} overlaps {others} of cluster {}, connected first",
                other.endpoint.cluster_id
            )));
            continue;
        }
        result.peers.insert(spec.cluster_id.clone(), peer);
    }
    result
}

fn remote_peer(spec: &EndpointSpec) -> Result<RemotePeer, String> {
    if spec.backend != WIREGUARD_BACKEND {
        return Err(format!(
            "cable driver {:?} is not supported, only wireguard",
            spec.backend
        ));
    }
    let key_text = spec
        .backend_config
        .get(PUBLIC_KEY)
        .ok_or("it publishes no WireGuard public key")?;
    let public_key = Key::from_base64(key_text).map_err(|e| format!("its public key: {e}"))?;
    let port = match spec.backend_config.get(UDP_PORT) {
        None => DEFAULT_UDP_PORT,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("its udp-port {p:?} is not a port"))?,
    };
    let address_text = if spec.public_ip.is_empty() {
        &spec.private_ip
    } else {
        &spec.public_ip
    };
    let ip: IpAddr = address_text
        .parse()
        .map_err(|_| format!("its address {address_text:?} is not an IP address"))?;
    let subnets = spec
        .subnets
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| format!("its subnet {s:?} is not a CIDR"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if subnets.is_empty() {
        return Err("it announces no subnets".into());
    }
    let health_check_ip = match spec.health_check_ip.as_str() {
        "" => None,
        text => Some(
            text.parse()
                .map_err(|_| format!("its healthCheckIP {text:?} is not an IP address"))?,
        ),
    };
    Ok(RemotePeer {
        endpoint: spec.clone(),
        public_key,
        address: SocketAddr::new(ip, port),
        subnets,
        health_check_ip,
    })
}

fn overlap(a: &[IpNet], b: &[IpNet]) -> Option<(IpNet, IpNet)> {
    a.iter().find_map(|x| {
        b.iter()
            .find(|y| x.contains(&y.network()) || y.contains(&x.network()))
            .map(|y| (*x, *y))
    })
}

/// The UAPI change that turns the device's peers into the plan's, or
/// `None` when they already match. Peers are compared on what we
/// configure, so roaming (a live endpoint moving) causes no change.
pub fn peer_changes(current: &DeviceConfig, plan: &GatewayPlan, psk: Key) -> Option<SetRequest> {
    let mut peers = Vec::new();
    for existing in &current.peers {
        if !plan
            .peers
            .values()
            .any(|p| p.public_key == existing.public_key)
        {
            peers.push(PeerChange {
                remove: true,
                ..PeerChange::new(existing.public_key)
            });
        }
    }
    for remote in plan.peers.values() {
        let allowed = remote.allowed_ips();
        let up_to_date = current.peer(&remote.public_key).is_some_and(|p| {
            p.preshared_key == Some(psk)
                && p.endpoint == Some(remote.address)
                && p.persistent_keepalive == PERSISTENT_KEEPALIVE
                && p.allowed_ips == allowed
        });
        if !up_to_date {
            peers.push(PeerChange {
                preshared_key: Some(psk),
                endpoint: Some(remote.address),
                persistent_keepalive: Some(PERSISTENT_KEEPALIVE),
                replace_allowed_ips: true,
                allowed_ips: allowed,
                ..PeerChange::new(remote.public_key)
            });
        }
    }
    (!peers.is_empty()).then(|| SetRequest {
        peers,
        ..SetRequest::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::types::Spec;

    fn endpoint(cluster: &str, subnet: &str, created: &str, ip: &str) -> Endpoint {
        let spec = EndpointSpec {
            cluster_id: cluster.into(),
            cable_name: format!("cable-{ip}"),
            health_check_ip: String::new(),
            hostname: format!("{cluster}-gw"),
            subnets: vec![subnet.into()],
            private_ip: ip.into(),
            backend: WIREGUARD_BACKEND.into(),
            backend_config: BTreeMap::from([
                (
                    PUBLIC_KEY.into(),
                    Key([ip.len() as u8 + cluster.len() as u8; 32]).to_base64(),
                ),
                (UDP_PORT.into(), "4500".into()),
            ]),
            ..EndpointSpec::default()
        };
        Endpoint::new(spec.object_name(), Spec { spec }, created.into())
    }

    fn local() -> LocalFacts {
        LocalFacts {
            cluster_id: "a".into(),
            subnets: vec!["10.1.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn connects_to_every_other_cluster_but_not_itself() {
        let endpoints = [
            endpoint("a", "10.1.0.0/16", "2026-01-01T00:00:00Z", "198.51.100.1"),
            endpoint("b", "10.2.0.0/16", "2026-01-01T00:00:00Z", "198.51.100.2"),
            endpoint("c", "10.3.0.0/16", "2026-01-01T00:00:00Z", "198.51.100.3"),
        ];
        let plan = plan(&local(), &endpoints);
        assert_eq!(plan.peers.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(plan.refused.is_empty());
        assert_eq!(
            plan.peers["b"].address,
            "198.51.100.2:4500".parse().unwrap()
        );
    }

    #[test]
    fn newest_endpoint_of_a_cluster_wins() {
        let endpoints = [
            endpoint("b", "10.2.0.0/16", "2026-01-01T00:00:00Z", "198.51.100.2"),
            endpoint("b", "10.2.0.0/16", "2026-01-02T00:00:00Z", "198.51.100.22"),
        ];
        let plan = plan(&local(), &endpoints);
        assert_eq!(plan.peers["b"].address.ip().to_string(), "198.51.100.22");
    }

    #[test]
    fn overlaps_are_refused_with_a_reason() {
        let endpoints = [
            endpoint("b", "10.2.0.0/16", "2026-01-01T00:00:00Z", "198.51.100.2"),
            endpoint(
                "rogue",
                "10.2.5.0/24",
                "2026-01-03T00:00:00Z",
                "198.51.100.9",
            ),
            endpoint(
                "mirror",
                "10.1.0.0/16",
                "2026-01-01T00:00:00Z",
                "198.51.100.8",
            ),
        ];
        let plan = plan(&local(), &endpoints);
        assert_eq!(plan.peers.keys().collect::<Vec<_>>(), ["b"]);
        let reasons: BTreeMap<_, _> = plan
            .refused
            .iter()
            .map(|r| (r.endpoint.cluster_id.as_str(), r.reason.as_str()))
            .collect();
        assert!(
            reasons["rogue"].contains("overlaps 10.2.0.0/16 of cluster b"),
            "{reasons:?}"
        );
        assert!(
            reasons["mirror"].contains("overlaps this cluster's"),
            "{reasons:?}"
        );
    }

    #[test]
    fn unusable_endpoints_are_refused() {
        let mut bad_key = endpoint("b", "10.2.0.0/16", "t", "198.51.100.2");
        bad_key
            .body
            .spec
            .backend_config
            .insert(PUBLIC_KEY.into(), "nope".into());
        let mut bad_backend = endpoint("c", "10.3.0.0/16", "t", "198.51.100.3");
        bad_backend.body.spec.backend = "libreswan".into();
        let mut bad_subnet = endpoint("d", "10.4.0.0/33", "t", "198.51.100.4");
        bad_subnet.body.spec.subnets = vec!["10.4.0.0/33".into()];
        let plan = plan(&local(), &[bad_key, bad_backend, bad_subnet]);
        assert!(plan.peers.is_empty());
        assert_eq!(plan.refused.len(), 3);
    }

    #[test]
    fn unchanged_plan_needs_no_peer_change_and_removals_are_planned() {
        let psk = Key([9; 32]);
        let endpoints = [endpoint("b", "10.2.0.0/16", "t", "198.51.100.2")];
        let plan = plan(&local(), &endpoints);
        let first = peer_changes(&DeviceConfig::default(), &plan, psk).expect("a peer to add");
        let configured = DeviceConfig::default().applied(&first);
        assert_eq!(peer_changes(&configured, &plan, psk), None);

        let emptied = peer_changes(&configured, &GatewayPlan::default(), psk).unwrap();
        assert!(emptied.peers[0].remove);
        assert!(configured.applied(&emptied).peers.is_empty());
    }

    #[test]
    fn health_check_ip_outside_the_subnets_is_allowed_too() {
        let mut e = endpoint("b", "10.2.0.0/16", "t", "198.51.100.2");
        e.body.spec.health_check_ip = "10.250.0.1".into();
        let plan = plan(&local(), &[e]);
        let allowed = plan.peers["b"].allowed_ips();
        assert_eq!(allowed.len(), 2);
    }
}
