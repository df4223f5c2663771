//! Globalnet's address plan, for clusters whose pod and service CIDRs
//! overlap: which slice of the cluster set's global range a cluster gets,
//! and which addresses of the slice go to its egress pool, its gateway's
//! health check and its exported services (ingress IPs). Pure: where the
//! slices are recorded (the directory broker's claim files, Submariner's
//! `submariner-globalnet-info` ConfigMap) and the kernel are elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::broker::types::is_dns_label;
use crate::net::nft::{EgressPool, GlobalnetNft, IngressRule, PodTranslation, Protocol};

/// Submariner's default global range and slice size.
pub const DEFAULT_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(242, 0, 0, 0), 8);
pub const DEFAULT_CLUSTER_SIZE: u32 = 65_536;
/// Submariner's default size of a `ClusterGlobalEgressIP` pool.
pub const DEFAULT_EGRESS_IPS: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "cluster size {size} must be a power of two, at least 4 and at most the range {range}"
    )]
    BadSize { size: u32, range: Ipv4Net },
    #[error("the global range {range} has no free slice of {size} addresses")]
    RangeExhausted { range: Ipv4Net, size: u32 },
    #[error("an egress pool of {egress} addresses does not fit a slice of {size} addresses (at most {max})")]
    PoolTooLarge { egress: u32, size: u32, max: u32 },
    #[error("no free global IP left in {cidr}")]
    SliceExhausted { cidr: Ipv4Net },
    #[error("no run of {count} free global IPs left in {cidr}")]
    NoRoomForPool { cidr: Ipv4Net, count: u32 },
}

/// The prefix length of slices of `size` addresses inside `range`.
pub fn slice_prefix(range: Ipv4Net, size: u32) -> Result<u8, AllocError> {
    let prefix = 32 - size.trailing_zeros() as u8;
    if !size.is_power_of_two() || size < 4 || prefix < range.prefix_len() {
        return Err(AllocError::BadSize { size, range });
    }
    Ok(prefix)
}

/// The lowest slice of `size` addresses in `range` that overlaps none of
/// `taken` (slices of other sizes included).
pub fn allocate_slice(range: Ipv4Net, size: u32, taken: &[Ipv4Net]) -> Result<Ipv4Net, AllocError> {
    let prefix = slice_prefix(range, size)?;
    range
        .trunc()
        .subnets(prefix)
        .expect("the prefix is inside the range")
        .find(|slice| {
            !taken
                .iter()
                .any(|t| t.contains(&slice.network()) || slice.contains(&t.network()))
        })
        .ok_or(AllocError::RangeExhausted { range, size })
}

/// How a cluster uses its slice. Of its host addresses (network and
/// broadcast address excluded), the first `egress` are the cluster's
/// egress pool, the last is the gateway's health-check address, and the
/// ones between are handed out as ingress IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceLayout {
    pub cidr: Ipv4Net,
    pub egress: u32,
}

impl SliceLayout {
    pub fn new(cidr: Ipv4Net, egress: u32) -> Result<SliceLayout, AllocError> {
        let hosts = hosts(cidr);
        // One address stays for the health check.
        let max = hosts.saturating_sub(1);
        if egress == 0 || egress > max {
            return Err(AllocError::PoolTooLarge {
                egress,
                size: 1 << (32 - cidr.prefix_len()),
                max,
            });
        }
        Ok(SliceLayout {
            cidr: cidr.trunc(),
            egress,
        })
    }

    fn nth_host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1 + n)
    }

    /// The cluster's egress pool: the first `count` of the addresses
    /// reserved for it (at most all of them, at least one).
    pub fn cluster_pool(&self, count: u32) -> Pool {
        Pool {
            first: self.nth_host(0),
            count: count.clamp(1, self.egress),
        }
    }

    pub fn health_check_ip(&self) -> Ipv4Addr {
        self.nth_host(hosts(self.cidr) - 1)
    }

    /// Addresses available to ingress IPs.
    pub fn ingress_capacity(&self) -> u32 {
        hosts(self.cidr) - 1 - self.egress
    }

    fn ingress_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (self.egress..self.egress + self.ingress_capacity()).map(|n| self.nth_host(n))
    }

    fn is_ingress_ip(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.cidr.network()) + 1);
        self.cidr.contains(&ip)
            && (self.egress..self.egress + self.ingress_capacity()).contains(&offset)
    }

    /// What the `submariner_global_IP_*` gauges report: addresses in use
    /// (egress pool, health check, ingress IPs) and still free.
    pub fn usage(&self, ingress: usize) -> (u32, u32) {
        let allocated = self.egress + 1 + ingress as u32;
        (allocated, hosts(self.cidr) - allocated)
    }
}

fn hosts(cidr: Ipv4Net) -> u32 {
    let size = 1u64 << (32 - cidr.prefix_len());
    size.saturating_sub(2) as u32
}

/// An exported service in `dir` mode: traffic to its ingress IP and port
/// goes to `address:port`. One YAML file per export, named `<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub name: String,
    /// The service's (or pod's) address in this cluster.
    pub address: Ipv4Addr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Where `port` leads at `address`, when not the same port (a
    /// Service's `targetPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// A pod of an exported headless service: it gets an ingress IP of its
/// own, which leads to it on every port and which its own traffic to
/// remote clusters leaves from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedPod {
    /// `namespace/name` of its `GlobalIngressIP`.
    pub name: String,
    pub address: Ipv4Addr,
    /// The export (`namespace/name`) it belongs to.
    pub service: String,
    /// The pod's name, when its endpoint says.
    pub pod: Option<String>,
}

/// Parses the export file `<stem>.yaml` and checks that its target is an
/// address of this cluster (`local`: its pod and service CIDRs); the error
/// says why it is refused.
pub fn parse_export(stem: &str, text: &str, local: &[IpNet]) -> Result<Export, String> {
    let export: Export = serde_yaml::from_str(text).map_err(|e| format!("malformed: {e}"))?;
    if export.name != stem {
        return Err(format!(
            "names export {:?}, not {stem:?} as its file name says",
            export.name
        ));
    }
    if !is_dns_label(&export.name) {
        return Err(format!("{:?} is not a DNS label", export.name));
    }
    if export.port == 0 {
        return Err("port 0 is not a port".into());
    }
    let address = std::net::IpAddr::V4(export.address);
    if !local.iter().any(|n| n.contains(&address)) {
        return Err(format!(
            "its address {} is not in this cluster's pod or service CIDRs",
            export.address
        ));
    }
    Ok(export)
}

/// Ingress IPs by export name: every export of `wanted` keeps its address
/// from `previous` (if still in the ingress range and not `reserved`), the
/// others get the lowest free one in name order, so that released
/// addresses are reused. Exports that find none are returned with the
/// reason.
pub fn allocate_ingress(
    layout: &SliceLayout,
    previous: &BTreeMap<String, Ipv4Addr>,
    wanted: &BTreeSet<String>,
    reserved: &BTreeSet<Ipv4Addr>,
) -> (BTreeMap<String, Ipv4Addr>, BTreeMap<String, AllocError>) {
    let mut allocated: BTreeMap<String, Ipv4Addr> = previous
        .iter()
        .filter(|(name, ip)| {
            wanted.contains(*name) && layout.is_ingress_ip(**ip) && !reserved.contains(*ip)
        })
        .map(|(name, ip)| (name.clone(), *ip))
        .collect();
    let mut used: BTreeSet<Ipv4Addr> = allocated.values().copied().collect();
    used.extend(reserved);
    // Each free address comes once: no need to mark it used.
    let mut free = layout.ingress_ips().filter(|ip| !used.contains(ip));
    let mut refused = BTreeMap::new();
    for name in wanted {
        if allocated.contains_key(name) {
            continue;
        }
        match free.next() {
            Some(ip) => {
                allocated.insert(name.clone(), ip);
            }
            None => {
                refused.insert(
                    name.clone(),
                    AllocError::SliceExhausted { cidr: layout.cidr },
                );
            }
        }
    }
    (allocated, refused)
}

/// A run of consecutive global addresses: an egress pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub count: u32,
}

impl Pool {
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + self.count - 1)
    }

    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..u32::from(self.first) + self.count).map(Ipv4Addr::from)
    }
}

/// Egress pools (Submariner's `GlobalEgressIP`) by name, `wanted` with
/// their sizes, from the slice's ingress range less `in_use`: a pool keeps
/// its run from `previous` while its size is the same and no address of
/// it is taken; the others get the lowest free run, in name order. Pools
/// that find no room are returned with the reason.
pub fn allocate_pools(
    layout: &SliceLayout,
    previous: &BTreeMap<String, Pool>,
    wanted: &BTreeMap<String, u32>,
    in_use: &BTreeSet<Ipv4Addr>,
) -> (BTreeMap<String, Pool>, BTreeMap<String, AllocError>) {
    let mut used = in_use.clone();
    let mut allocated = BTreeMap::new();
    for (name, pool) in previous {
        let fits = wanted.get(name) == Some(&pool.count)
            && pool
                .addresses()
                .all(|ip| layout.is_ingress_ip(ip) && !used.contains(&ip));
        if fits {
            used.extend(pool.addresses());
            allocated.insert(name.clone(), *pool);
        }
    }
    let mut refused = BTreeMap::new();
    for (name, count) in wanted {
        if allocated.contains_key(name) {
            continue;
        }
        let run = free_run(layout, &used, *count);
        match run {
            Some(pool) => {
                used.extend(pool.addresses());
                allocated.insert(name.clone(), pool);
            }
            None => {
                refused.insert(
                    name.clone(),
                    AllocError::NoRoomForPool {
                        cidr: layout.cidr,
                        count: *count,
                    },
                );
            }
        }
    }
    (allocated, refused)
}

/// The lowest run of `count` free ingress-range addresses.
fn free_run(layout: &SliceLayout, used: &BTreeSet<Ipv4Addr>, count: u32) -> Option<Pool> {
    if count == 0 {
        return None;
    }
    let mut start: Option<Ipv4Addr> = None;
    let mut length = 0;
    for ip in layout.ingress_ips() {
        if used.contains(&ip) {
            start = None;
            length = 0;
            continue;
        }
        let first = *start.get_or_insert(ip);
        length += 1;
        if length == count {
            return Some(Pool { first, count });
        }
    }
    None
}

/// The gateway's translation rules: the cluster's egress pool, the pools
/// of selected pods, one DNAT per export port that has an ingress IP, for
/// traffic out of `tunnel`, and both ways for each exported pod that has
/// one. The entries of one export and port (a service's endpoints) share
/// the rule.
pub fn nft_rules(
    tunnel: &str,
    cluster_pool: Pool,
    exports: &[Export],
    pods: &[ExportedPod],
    ingress: &BTreeMap<String, Ipv4Addr>,
    egress_pools: Vec<EgressPool>,
) -> GlobalnetNft {
    let mut rules: BTreeMap<(String, Protocol, u16), IngressRule> = BTreeMap::new();
    for e in exports {
        let Some(ip) = ingress.get(&e.name) else {
            continue;
        };
        rules
            .entry((e.name.clone(), e.protocol, e.port))
            .or_insert_with(|| IngressRule {
                name: e.name.clone(),
                global_ip: *ip,
                protocol: e.protocol,
                port: e.port,
                targets: Vec::new(),
            })
            .targets
            .push(SocketAddrV4::new(
                e.address,
                e.target_port.unwrap_or(e.port),
            ));
    }
    GlobalnetNft {
        tunnel: tunnel.to_string(),
        egress: (cluster_pool.first, cluster_pool.last()),
        egress_pools,
        ingress: rules.into_values().collect(),
        pods: pods
            .iter()
            .filter_map(|pod| {
                Some(PodTranslation {
                    name: pod.name.clone(),
                    global_ip: *ingress.get(&pod.name)?,
                    address: pod.address,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slices_are_the_lowest_free_and_never_overlap() {
        let range = DEFAULT_RANGE;
        assert_eq!(allocate_slice(range, 65_536, &[]), Ok(net("242.0.0.0/16")));
        let taken = [net("242.0.0.0/16"), net("242.2.0.0/16")];
        assert_eq!(
            allocate_slice(range, 65_536, &taken),
            Ok(net("242.1.0.0/16"))
        );
        // A smaller slice taken by another cluster blocks the /16 around it.
        let taken = [net("242.0.0.0/16"), net("242.1.4.0/24")];
        assert_eq!(
            allocate_slice(range, 65_536, &taken),
            Ok(net("242.2.0.0/16"))
        );
        // A larger one blocks every slice inside it.
        assert_eq!(
            allocate_slice(range, 256, &[net("242.0.0.0/15")]),
            Ok(net("242.2.0.0/24"))
        );
    }

    #[test]
    fn an_exhausted_range_and_bad_sizes_are_errors() {
        let range = net("242.0.0.0/30");
        assert_eq!(allocate_slice(range, 4, &[]), Ok(range));
        assert_eq!(
            allocate_slice(range, 4, &[range]),
            Err(AllocError::RangeExhausted { range, size: 4 })
        );
        for size in [0, 3, 1000, 8] {
            assert_eq!(
                allocate_slice(range, size, &[]),
                Err(AllocError::BadSize { size, range }),
                "size {size}"
            );
        }
    }

    #[test]
    fn the_slice_layout_puts_egress_first_and_the_health_check_last() {
        let layout = SliceLayout::new(net("242.3.0.0/16"), 8).unwrap();
        let all = layout.cluster_pool(8);
        assert_eq!(
            (all.first, all.last()),
            (Ipv4Addr::new(242, 3, 0, 1), Ipv4Addr::new(242, 3, 0, 8))
        );
        // A smaller pool is the start of the reserved addresses, a larger
        // one is cut to them.
        assert_eq!(layout.cluster_pool(2).last(), Ipv4Addr::new(242, 3, 0, 2));
        assert_eq!(layout.cluster_pool(20), all);
        assert_eq!(layout.health_check_ip(), Ipv4Addr::new(242, 3, 255, 254));
        assert_eq!(layout.ingress_capacity(), 65_534 - 9);
        assert_eq!(layout.usage(2), (11, 65_534 - 11));
    }

    #[test]
    fn a_pool_larger_than_the_slice_is_refused() {
        // A /28: 14 hosts, one for the health check.
        assert!(SliceLayout::new(net("242.0.0.0/28"), 13).is_ok());
        assert_eq!(
            SliceLayout::new(net("242.0.0.0/28"), 14),
            Err(AllocError::PoolTooLarge {
                egress: 14,
                size: 16,
                max: 13
            })
        );
        assert!(SliceLayout::new(net("242.0.0.0/28"), 0).is_err());
    }

    #[test]
    fn ingress_ips_are_kept_released_reused_and_exhaustion_is_reported() {
        // 14 hosts: 8 egress, 1 health check, 5 ingress (.9 to .13).
        let layout = SliceLayout::new(net("242.0.0.0/28"), 8).unwrap();
        let ip = |d| Ipv4Addr::new(242, 0, 0, d);
        let (first, refused) = allocate_ingress(
            &layout,
            &BTreeMap::new(),
            &names(&["a", "b", "c"]),
            &BTreeSet::new(),
        );
        assert!(refused.is_empty());
        assert_eq!(first["a"], ip(9));
        assert_eq!(first["c"], ip(11));

        // b goes; a newcomer gets b's address; a and c keep theirs even
        // though a name sorting before them arrives.
        let (second, _) = allocate_ingress(
            &layout,
            &first,
            &names(&["a", "c", "0new"]),
            &BTreeSet::new(),
        );
        assert_eq!(second["0new"], ip(10));
        assert_eq!((second["a"], second["c"]), (ip(9), ip(11)));
        assert!(!second.contains_key("b"));

        // Six exports, five addresses: the last in name order is refused.
        let wanted = names(&["a", "c", "0new", "d", "e", "f"]);
        let (third, refused) = allocate_ingress(&layout, &second, &wanted, &BTreeSet::new());
        assert_eq!(third.len(), 5);
        assert_eq!(
            refused.get("f"),
            Some(&AllocError::SliceExhausted { cidr: layout.cidr })
        );
        assert_eq!(layout.usage(third.len()), (14, 0));

        // One released: the refused one gets its address.
        let wanted = names(&["a", "c", "0new", "e", "f"]);
        let (fourth, refused) = allocate_ingress(&layout, &third, &wanted, &BTreeSet::new());
        assert!(refused.is_empty());
        assert_eq!(fourth["f"], third["d"]);
    }

    #[test]
    fn previous_addresses_outside_the_ingress_range_are_not_kept() {
        let layout = SliceLayout::new(net("242.0.0.0/28"), 8).unwrap();
        let previous = BTreeMap::from([
            ("a".to_string(), Ipv4Addr::new(242, 0, 0, 1)),
            ("b".to_string(), Ipv4Addr::new(242, 1, 0, 9)),
            ("c".to_string(), Ipv4Addr::new(242, 0, 0, 14)),
        ]);
        let (allocated, _) = allocate_ingress(
            &layout,
            &previous,
            &names(&["a", "b", "c"]),
            &BTreeSet::new(),
        );
        let ips: BTreeSet<_> = allocated.values().map(|ip| ip.octets()[3]).collect();
        assert_eq!(ips, BTreeSet::from([9, 10, 11]));
    }

    #[test]
    fn exports_are_parsed_and_bad_ones_refused_with_a_reason() {
        let local: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let good = "name: web\naddress: 10.1.1.2\nport: 7777\n";
        let export = parse_export("web", good, &local).unwrap();
        assert_eq!(export.protocol, Protocol::Tcp);
        assert_eq!(export.port, 7777);
        let udp = "name: dns\naddress: 10.1.1.3\nport: 53\nprotocol: udp\n";
        assert_eq!(
            parse_export("dns", udp, &local).unwrap().protocol,
            Protocol::Udp
        );
        for (stem, text, why) in [
            (
                "web",
                "name: web\naddress: 10.1.1.999\nport: 1\n",
                "malformed",
            ),
            (
                "web",
                "name: web\naddress: 10.9.1.2\nport: 1\n",
                "not in this cluster",
            ),
            ("web", "name: web\naddress: 10.1.1.2\nport: 0\n", "port 0"),
            (
                "web",
                "name: other\naddress: 10.1.1.2\nport: 1\n",
                "file name",
            ),
            (
                "Web",
                "name: Web\naddress: 10.1.1.2\nport: 1\n",
                "DNS label",
            ),
            (
                "web",
                "name: web\naddress: 10.1.1.2\nport: 1\nprotocol: sctp\n",
                "malformed",
            ),
            ("web", "{ not yaml", "malformed"),
        ] {
            let reason = parse_export(stem, text, &local).unwrap_err();
            assert!(reason.contains(why), "{text:?}: {reason}");
        }
    }

    #[test]
    fn egress_pools_are_runs_that_keep_their_place_and_avoid_ingress_ips() {
        let layout = SliceLayout::new(net("242.1.0.0/28"), 2).unwrap();
        // Hosts .1-.14: .1-.2 the cluster's pool, .14 the health check.
        let ingress: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(242, 1, 0, 4)].into();
        let wanted = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 3)]);
        let (pools, refused) = allocate_pools(&layout, &BTreeMap::new(), &wanted, &ingress);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(pools["a"].first, Ipv4Addr::new(242, 1, 0, 5), "{pools:?}");
        assert_eq!(pools["a"].last(), Ipv4Addr::new(242, 1, 0, 6));
        assert_eq!(pools["b"].first, Ipv4Addr::new(242, 1, 0, 7));
        // Kept while the size is the same; a new size moves the pool.
        let wanted = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 4)]);
        let (again, _) = allocate_pools(&layout, &pools, &wanted, &ingress);
        assert_eq!(again["a"], pools["a"]);
        assert_eq!(again["b"].first, Ipv4Addr::new(242, 1, 0, 7));
        assert_eq!(again["b"].count, 4);
        // No run long enough: refused with the reason.
        let huge = BTreeMap::from([("c".to_string(), 12)]);
        let (none, refused) = allocate_pools(&layout, &BTreeMap::new(), &huge, &ingress);
        assert!(none.is_empty());
        assert!(refused["c"].to_string().contains("no run of 12"));
        // Ingress IPs stay off addresses a pool keeps.
        let reserved: BTreeSet<Ipv4Addr> = pools["a"].addresses().collect();
        let (ips, _) = allocate_ingress(
            &layout,
            &BTreeMap::new(),
            &names(&["x", "y", "z"]),
            &reserved,
        );
        assert!(ips.values().all(|ip| !reserved.contains(ip)), "{ips:?}");
    }

    #[test]
    fn nft_rules_cover_exports_with_an_ingress_ip() {
        let layout = SliceLayout::new(net("242.1.0.0/16"), 8).unwrap();
        let export = |name: &str| Export {
            name: name.into(),
            address: Ipv4Addr::new(10, 1, 1, 2),
            port: 7777,
            protocol: Protocol::Tcp,
            target_port: None,
        };
        let ingress = BTreeMap::from([("web".to_string(), Ipv4Addr::new(242, 1, 0, 9))]);
        let rules = nft_rules(
            "strait-wg",
            layout.cluster_pool(3),
            &[export("web"), export("refused")],
            &[],
            &ingress,
            Vec::new(),
        );
        assert_eq!(
            rules.egress,
            (Ipv4Addr::new(242, 1, 0, 1), Ipv4Addr::new(242, 1, 0, 3))
        );
        assert_eq!(rules.ingress.len(), 1);
        assert_eq!(rules.ingress[0].global_ip, Ipv4Addr::new(242, 1, 0, 9));
        assert_eq!(
            rules.ingress[0].targets,
            [SocketAddrV4::new(
                Ipv4Addr::new(10, 1, 1, 2),
                rules.ingress[0].port
            )]
        );
    }
}
