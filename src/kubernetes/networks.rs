//! The checks `join` makes before it creates anything: a usable cluster
//! id, and CIDRs that no other cluster of the set has.

use ipnet::IpNet;

use crate::broker::types::{is_dns_label, ClusterSpec};

/// Why `id` cannot be a cluster id: it must be a DNS label (RFC 1123), as
/// it names objects and is part of others' names.
pub fn cluster_id_problem(id: &str) -> Option<String> {
    (!is_dns_label(id)).then(|| {
        format!(
            "cluster id {id:?} is not a DNS label (1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"
        )
    })
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Each overlap of `ours` with the pod or service CIDRs of another
/// cluster, as one readable line. CIDRs a cluster wrote that do not parse
/// are not compared.
pub fn cidr_conflicts(cluster_id: &str, ours: &[IpNet], others: &[ClusterSpec]) -> Vec<String> {
    let mut conflicts = Vec::new();
    for other in others.iter().filter(|o| o.cluster_id != cluster_id) {
        let theirs = other.cluster_cidr.iter().chain(&other.service_cidr);
        for text in theirs {
            let Ok(net) = text.parse::<IpNet>() else {
                continue;
            };
            for mine in ours.iter().filter(|mine| overlaps(mine, &net)) {
                conflicts.push(format!(
                    "{mine} overlaps {net} of cluster {}",
                    other.cluster_id
                ));
            }
        }
    }
    conflicts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_ids_are_dns_labels() {
        for good in ["east", "c1", "a-b-9", &"x".repeat(63)] {
            assert_eq!(cluster_id_problem(good), None, "{good}");
        }
        for bad in ["", "East", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(cluster_id_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn overlap_is_containment_either_way() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.1.0.0/16")));
        assert!(!overlaps(&net("10.1.0.0/16"), &net("10.2.0.0/16")));
        assert!(!overlaps(&net("10.0.0.0/8"), &net("2001:db8::/32")));
    }

    #[test]
    fn conflicts_name_the_other_cluster_and_skip_our_own() {
        let others = vec![
            ClusterSpec {
                cluster_id: "east".into(),
                cluster_cidr: vec!["10.1.0.0/16".into()],
                service_cidr: vec!["10.96.0.0/16".into(), "garbage".into()],
                ..Default::default()
            },
            ClusterSpec {
                cluster_id: "west".into(),
                cluster_cidr: vec!["10.2.0.0/16".into()],
                ..Default::default()
            },
        ];
        let ours = [net("10.2.0.0/16"), net("10.96.128.0/17")];
        assert_eq!(
            cidr_conflicts("west", &ours, &others),
            vec!["10.96.128.0/17 overlaps 10.96.0.0/16 of cluster east"]
        );
        assert!(cidr_conflicts("west", &[net("10.3.0.0/16")], &others).is_empty());
    }
}
