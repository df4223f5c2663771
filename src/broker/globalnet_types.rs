//! Submariner's globalnet kinds (`submariner.io/v1`), field for field:
//! the egress pools of a cluster and of selected pods, and the global
//! ingress addresses of exported services.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::{Condition, LabelSelector, SpecAndStatus};

/// `ClusterGlobalEgressIP` (cluster-scoped, one per cluster): the pool
/// every pod's cross-cluster traffic leaves from unless a `GlobalEgressIP`
/// selects it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ClusterGlobalEgressIPSpec {
    /// How many global addresses the pool has.
    // Submariner names this field unlike `GlobalEgressIP`'s.
    #[serde(
        rename = "numGlobalIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 20))]
    pub num_global_ips: Option<i64>,
}

/// `GlobalEgressIP`: a pool for the pods of a namespace, or those a
/// selector picks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct GlobalEgressIPSpec {
    #[serde(
        rename = "numberOfIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 20))]
    pub number_of_ips: Option<i64>,
    #[serde(
        rename = "podSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct EgressIPStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(
        rename = "allocatedIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allocated_ips: Vec<String>,
}

/// `GlobalIngressIP`: the global address of an exported service (or of
/// one pod of a headless service).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct GlobalIngressIPSpec {
    /// `ClusterIPService` or `HeadlessServicePod`.
    pub target: String,
    #[serde(
        rename = "serviceRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub service_ref: Option<LocalObjectReference>,
    #[serde(rename = "podRef", default, skip_serializing_if = "Option::is_none")]
    pub pod_ref: Option<LocalObjectReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectReference {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct GlobalIngressIPStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(
        rename = "allocatedIP",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub allocated_ip: String,
}

pub type ClusterGlobalEgressIPBody = SpecAndStatus<ClusterGlobalEgressIPSpec, EgressIPStatus>;
pub type GlobalEgressIPBody = SpecAndStatus<GlobalEgressIPSpec, EgressIPStatus>;
pub type GlobalIngressIPBody = SpecAndStatus<GlobalIngressIPSpec, GlobalIngressIPStatus>;
