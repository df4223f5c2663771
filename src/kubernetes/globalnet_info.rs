//! Submariner's `submariner-globalnet-info` ConfigMap in the broker
//! namespace: whether globalnet is on, its range and per-cluster size, and
//! (`clusterinfo`) the global CIDR each cluster was given.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

pub const NAME: &str = "submariner-globalnet-info";
pub const ENABLED_KEY: &str = "globalnetEnabled";
pub const CIDR_RANGE_KEY: &str = "globalnetCidrRange";
pub const CLUSTER_SIZE_KEY: &str = "globalnetClusterSize";
pub const CLUSTER_INFO_KEY: &str = "clusterinfo";

/// The settings `deploy-broker` writes once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalnetSettings {
    pub enabled: bool,
    pub cidr_range: Ipv4Net,
    pub cluster_size: u32,
}

/// One entry of `clusterinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub global_cidr: Vec<String>,
}

impl GlobalnetSettings {
    /// The ConfigMap as first written, with no cluster yet.
    pub fn config_map(&self, namespace: &str) -> ConfigMap {
        let mut data = self.data();
        data.insert(CLUSTER_INFO_KEY.into(), "[]".into());
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ENABLED_KEY.into(), self.enabled.to_string()),
            (CIDR_RANGE_KEY.into(), self.cidr_range.to_string()),
            (CLUSTER_SIZE_KEY.into(), self.cluster_size.to_string()),
        ])
    }

    /// Whether `existing` says the same as these settings.
    pub fn matches(&self, existing: &ConfigMap) -> bool {
        let data = existing.data.clone().unwrap_or_default();
        self.data().iter().all(|(k, v)| data.get(k) == Some(v))
    }
}

/// Whether the broker's ConfigMap turns globalnet on (absent: off).
pub fn enabled(config_map: Option<&ConfigMap>) -> bool {
    config_map
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(ENABLED_KEY))
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_has_submariners_keys() {
        let settings = GlobalnetSettings {
            enabled: true,
            cidr_range: "242.0.0.0/8".parse().unwrap(),
            cluster_size: 65536,
        };
        let map = settings.config_map("submariner-k8s-broker");
        let data = map.data.clone().unwrap();
        assert_eq!(data[ENABLED_KEY], "true");
        assert_eq!(data[CIDR_RANGE_KEY], "242.0.0.0/8");
        assert_eq!(data[CLUSTER_SIZE_KEY], "65536");
        let info: Vec<ClusterInfo> = serde_json::from_str(&data[CLUSTER_INFO_KEY]).unwrap();
        assert!(info.is_empty());
        assert!(enabled(Some(&map)));
        assert!(settings.matches(&map));
        let off = GlobalnetSettings {
            enabled: false,
            ..settings
        };
        assert!(!off.matches(&map));
        assert!(!enabled(Some(&off.config_map("b"))));
        assert!(!enabled(None));
    }
}
