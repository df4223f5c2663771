//! Submariner's `submariner-globalnet-info` ConfigMap in the broker
//! namespace: whether globalnet is on, its range and per-cluster size, and
//! (`clusterinfo`) the global CIDR each cluster was given.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::broker::globalnet::ClusterInfo;
use crate::plan::globalnet::{allocate_slice, AllocError};

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

impl GlobalnetSettings {
    /// The settings a broker's ConfigMap holds, if it turns globalnet on.
    pub fn of(config_map: &ConfigMap) -> Result<Option<GlobalnetSettings>, String> {
        if !enabled(Some(config_map)) {
            return Ok(None);
        }
        let data = config_map.data.clone().unwrap_or_default();
        let field = |key: &str| data.get(key).ok_or_else(|| format!("{NAME} has no {key}"));
        Ok(Some(GlobalnetSettings {
            enabled: true,
            cidr_range: field(CIDR_RANGE_KEY)?
                .parse()
                .map_err(|e| format!("{NAME} {CIDR_RANGE_KEY}: {e}"))?,
            cluster_size: field(CLUSTER_SIZE_KEY)?
                .parse()
                .map_err(|e| format!("{NAME} {CLUSTER_SIZE_KEY}: {e}"))?,
        }))
    }
}

/// The global CIDR of cluster `id` in `config_map`'s `clusterinfo`: the
/// one it has, or the lowest free slice, added. Returns the CIDR and
/// the ConfigMap to write back (`None` when nothing changed).
pub fn claim(
    config_map: &ConfigMap,
    settings: &GlobalnetSettings,
    id: &str,
) -> Result<(Ipv4Net, Option<ConfigMap>), String> {
    let mut data = config_map.data.clone().unwrap_or_default();
    let text = data
        .get(CLUSTER_INFO_KEY)
        .map(String::as_str)
        .unwrap_or("[]");
    let mut clusters: Vec<ClusterInfo> =
        serde_json::from_str(if text.trim().is_empty() { "[]" } else { text })
            .map_err(|e| format!("{NAME} {CLUSTER_INFO_KEY} is malformed: {e}"))?;
    let cidrs = |info: &ClusterInfo| -> Vec<Ipv4Net> {
        info.global_cidr
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    };
    if let Some(cidr) = clusters
        .iter()
        .find(|c| c.cluster_id == id)
        .and_then(|c| cidrs(c).first().copied())
    {
        return Ok((cidr, None));
    }
    let taken: Vec<Ipv4Net> = clusters.iter().flat_map(cidrs).collect();
    let cidr = allocate_slice(settings.cidr_range, settings.cluster_size, &taken)
        .map_err(|e: AllocError| e.to_string())?;
    clusters.retain(|c| c.cluster_id != id);
    clusters.push(ClusterInfo {
        cluster_id: id.to_string(),
        global_cidr: vec![cidr.to_string()],
    });
    data.insert(
        CLUSTER_INFO_KEY.into(),
        serde_json::to_string(&clusters).expect("clusterinfo serializes"),
    );
    let mut updated = config_map.clone();
    updated.data = Some(data);
    Ok((cidr, Some(updated)))
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

    #[test]
    fn clusters_claim_distinct_slices_once() {
        let settings = GlobalnetSettings {
            enabled: true,
            cidr_range: "242.0.0.0/8".parse().unwrap(),
            cluster_size: 65536,
        };
        let map = settings.config_map("b");
        assert_eq!(GlobalnetSettings::of(&map), Ok(Some(settings.clone())));
        let (east, map) = claim(&map, &settings, "east").unwrap();
        let map = map.expect("a new claim is written");
        assert_eq!(east.to_string(), "242.0.0.0/16");
        let (west, map) = claim(&map, &settings, "west").unwrap();
        assert_eq!(west.to_string(), "242.1.0.0/16");
        let map = map.unwrap();
        // Again: the same slice, nothing to write.
        assert_eq!(claim(&map, &settings, "east").unwrap(), (east, None));
        let info: Vec<ClusterInfo> =
            serde_json::from_str(&map.data.unwrap()[CLUSTER_INFO_KEY]).unwrap();
        assert_eq!(info.len(), 2);
        let tiny = GlobalnetSettings {
            cidr_range: "242.0.0.0/15".parse().unwrap(),
            ..settings
        };
        let full = claim(&settings.config_map("b"), &tiny, "a")
            .unwrap()
            .1
            .unwrap();
        let full = claim(&full, &tiny, "b").unwrap().1.unwrap();
        assert!(claim(&full, &tiny, "c")
            .unwrap_err()
            .contains("no free slice"));
    }
}
