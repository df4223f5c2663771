//! Broker objects in Submariner's `submariner.io/v1` schema, field for
//! field, so that Strait and Submariner clusters can share one broker.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "submariner.io/v1";
/// The label Submariner puts on everything a cluster syncs to the broker.
pub const CLUSTER_ID_LABEL: &str = "submariner-io/clusterID";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 in UTC, second precision: such strings sort in time order.
    #[serde(
        rename = "creationTimestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_timestamp: Option<String>,
}

/// A broker object: `spec` for clusters and endpoints, `status` for
/// gateways, as the CRDs have them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object<S> {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub body: S,
}

/// What the three kinds share: where they live and who owns them.
pub trait Kind: Serialize + serde::de::DeserializeOwned + Clone + PartialEq {
    const KIND: &'static str;
    /// The broker directory's subdirectory for this kind.
    const PLURAL: &'static str;
    /// The cluster that owns (and alone writes) the object.
    fn cluster_id(&self) -> &str;
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ClusterSpec {
    #[schemars(length(min = 1, max = 63))]
    pub cluster_id: String,
    #[serde(default)]
    pub color_codes: Vec<String>,
    #[serde(default)]
    pub service_cidr: Vec<String>,
    #[serde(default)]
    pub cluster_cidr: Vec<String>,
    #[serde(default)]
    pub global_cidr: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct EndpointSpec {
    #[schemars(length(min = 1, max = 63))]
    pub cluster_id: String,
    pub cable_name: String,
    #[serde(rename = "healthCheckIP", default)]
    pub health_check_ip: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub private_ip: String,
    #[serde(default)]
    pub public_ip: String,
    #[serde(default)]
    pub nat_enabled: bool,
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub backend_config: BTreeMap<String, String>,
}

/// `backend_config` keys of the WireGuard cable.
pub const PUBLIC_KEY: &str = "publicKey";
pub const UDP_PORT: &str = "udp-port";
pub const WIREGUARD_BACKEND: &str = "wireguard";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct GatewayStatus {
    #[serde(default)]
    pub version: String,
    #[serde(rename = "haStatus", default)]
    pub ha_status: String,
    #[serde(rename = "localEndpoint", default)]
    pub local_endpoint: EndpointSpec,
    #[serde(rename = "statusFailure", default)]
    pub status_failure: String,
    #[serde(default)]
    pub connections: Vec<Connection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Connection {
    /// `connected`, `connecting` or `error`.
    pub status: String,
    #[serde(rename = "statusMessage", default)]
    pub status_message: String,
    pub endpoint: EndpointSpec,
    #[serde(rename = "usingIP", default)]
    pub using_ip: String,
    #[serde(rename = "usingNAT", default)]
    pub using_nat: bool,
    #[serde(
        rename = "latencyRTT",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub latency_rtt: Option<LatencyRtt>,
}

/// Durations written as Go prints them (`1.234ms`), as Submariner does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct LatencyRtt {
    pub last: String,
    pub min: String,
    pub average: String,
    pub max: String,
    #[serde(rename = "stdDev")]
    pub std_dev: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Spec<S> {
    pub spec: S,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status<S> {
    pub status: S,
}

pub type Cluster = Object<Spec<ClusterSpec>>;
pub type Endpoint = Object<Spec<EndpointSpec>>;
pub type Gateway = Object<Status<GatewayStatus>>;

impl Kind for Spec<ClusterSpec> {
    const KIND: &'static str = "Cluster";
    const PLURAL: &'static str = "clusters";
    fn cluster_id(&self) -> &str {
        &self.spec.cluster_id
    }
}

impl Kind for Spec<EndpointSpec> {
    const KIND: &'static str = "Endpoint";
    const PLURAL: &'static str = "endpoints";
    fn cluster_id(&self) -> &str {
        &self.spec.cluster_id
    }
}

impl Kind for Status<GatewayStatus> {
    const KIND: &'static str = "Gateway";
    const PLURAL: &'static str = "gateways";
    fn cluster_id(&self) -> &str {
        &self.status.local_endpoint.cluster_id
    }
}

impl<S: Kind> Object<S> {
    /// A new object owned by `body`'s cluster, labelled as Submariner does.
    pub fn new(name: String, body: S, created: String) -> Object<S> {
        let labels =
            BTreeMap::from([(CLUSTER_ID_LABEL.to_string(), body.cluster_id().to_string())]);
        Object {
            api_version: API_VERSION.to_string(),
            kind: S::KIND.to_string(),
            metadata: ObjectMeta {
                name,
                labels,
                creation_timestamp: Some(created),
            },
            body,
        }
    }

    pub fn cluster_id(&self) -> &str {
        self.body.cluster_id()
    }

    /// Why this object cannot be taken as written by its owner: the kind
    /// must match and the name must start with the owner's cluster id
    /// (`<cluster_id>-...` or exactly it).
    pub fn ownership_problem(&self) -> Option<String> {
        if self.api_version != API_VERSION || self.kind != S::KIND {
            return Some(format!(
                "is {} {}, expected {API_VERSION} {}",
                self.api_version,
                self.kind,
                S::KIND
            ));
        }
        let id = self.cluster_id();
        let name = &self.metadata.name;
        let owned = !id.is_empty()
            && (name == id
                || name
                    .strip_prefix(id)
                    .is_some_and(|rest| rest.starts_with('-')));
        (!owned).then(|| format!("is named {name:?} but claims cluster {id:?}"))
    }
}

impl EndpointSpec {
    /// Submariner's object name for an endpoint.
    pub fn object_name(&self) -> String {
        format!("{}-{}", self.cluster_id, self.cable_name)
    }
}

/// A status condition, as `metav1.Condition` has it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(rename = "lastTransitionTime", default)]
    pub last_transition_time: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(
        rename = "observedGeneration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,
}

/// A label selector, as `metav1.LabelSelector` has it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct LabelSelector {
    #[serde(
        rename = "matchLabels",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
    #[serde(
        rename = "matchExpressions",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Refuses what the API server's own selector parsing would: an
    /// unknown operator, `In`/`NotIn` without values, `Exists`/
    /// `DoesNotExist` with some.
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.match_expressions {
            let wants_values = match r.operator.as_str() {
                "In" | "NotIn" => true,
                "Exists" | "DoesNotExist" => false,
                other => {
                    return Err(format!(
                        "unknown selector operator {other:?} (key {})",
                        r.key
                    ))
                }
            };
            if wants_values == r.values.is_empty() {
                return Err(format!(
                    "selector operator {} on key {} {} values",
                    r.operator,
                    r.key,
                    if wants_values { "needs" } else { "takes no" }
                ));
            }
        }
        Ok(())
    }

    /// Whether `labels` have every `matchLabels` pair and meet every
    /// requirement (an empty selector matches everything). Call
    /// [`LabelSelector::validate`] first: an unknown operator matches
    /// nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A body with a spec and, once a controller has seen it, a status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpecAndStatus<S, T> {
    pub spec: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<T>,
}

/// Whether `s` is an RFC 1123 DNS label, as cluster ids and object
/// names must be: a-z, 0-9 and '-', at most 63, no '-' at either end.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Formats `d` as Go's `time.Duration.String()` would for sub-hour spans.
pub fn go_duration(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_string()
    } else if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 1_000_000 {
        format!("{}µs", trim(nanos as f64 / 1e3))
    } else if nanos < 1_000_000_000 {
        format!("{}ms", trim(nanos as f64 / 1e6))
    } else {
        format!("{}s", trim(nanos as f64 / 1e9))
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": { "tier": "db" },
            "matchExpressions": [
                { "key": "zone", "operator": "In", "values": ["a", "b"] },
                { "key": "canary", "operator": "DoesNotExist" },
            ],
        }))
        .unwrap();
        selector.validate().unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector.matches(&labels(&[("tier", "db"), ("zone", "b")])));
        assert!(!selector.matches(&labels(&[("tier", "db"), ("zone", "c")])));
        assert!(!selector.matches(&labels(&[("tier", "db")])));
        assert!(!selector.matches(&labels(&[("tier", "db"), ("zone", "a"), ("canary", "")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
        let exists_with_values = LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Exists".into(),
                values: vec!["a".into()],
            }],
            ..Default::default()
        };
        assert!(exists_with_values
            .validate()
            .unwrap_err()
            .contains("takes no values"));
    }

    #[test]
    fn endpoint_yaml_uses_submariner_field_names() {
        let spec = EndpointSpec {
            cluster_id: "east".into(),
            cable_name: "submariner-cable-east-192-0-2-1".into(),
            health_check_ip: "10.1.0.1".into(),
            subnets: vec!["10.1.0.0/16".into()],
            backend_config: BTreeMap::from([(PUBLIC_KEY.into(), "k".into())]),
            ..EndpointSpec::default()
        };
        let object = Endpoint::new(
            spec.object_name(),
            Spec { spec },
            "2026-11-26T00:00:00Z".into(),
        );
        let yaml = serde_yaml::to_string(&object).unwrap();
        for field in [
            "apiVersion: submariner.io/v1",
            "kind: Endpoint",
            "submariner-io/clusterID: east",
            "healthCheckIP: 10.1.0.1",
            "cable_name:",
            "backend_config:",
            "publicKey: k",
            "creationTimestamp:",
        ] {
            assert!(yaml.contains(field), "{field} missing in\n{yaml}");
        }
        let back: Endpoint = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, object);
        assert_eq!(back.ownership_problem(), None);
    }

    #[test]
    fn a_submariner_gateway_parses() {
        let yaml = r#"
apiVersion: submariner.io/v1
kind: Gateway
metadata: { name: gw1 }
status:
  haStatus: active
  version: v0.16
  statusFailure: ""
  localEndpoint: { cluster_id: west, cable_name: c, hostname: gw1, subnets: [], private_ip: 192.0.2.1, public_ip: "", nat_enabled: false, backend: wireguard, backend_config: {} }
  connections:
  - status: connected
    statusMessage: ""
    usingIP: 192.0.2.2
    usingNAT: false
    endpoint: { cluster_id: east, cable_name: d, hostname: gw2, subnets: [10.2.0.0/16], private_ip: 192.0.2.2, public_ip: "", nat_enabled: false, backend: wireguard, backend_config: {} }
    latencyRTT: { last: 1.1ms, min: 1ms, average: 1.05ms, max: 1.1ms, stdDev: 50µs }
"#;
        let gateway: Gateway = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(gateway.body.status.connections[0].status, "connected");
        assert_eq!(gateway.cluster_id(), "west");
        // Submariner names gateways by node: not owned by its cluster's id.
        assert!(gateway.ownership_problem().is_some());
    }

    #[test]
    fn ownership_follows_the_name() {
        let spec = EndpointSpec {
            cluster_id: "east".into(),
            cable_name: "c".into(),
            ..EndpointSpec::default()
        };
        let mut object = Endpoint::new("west-c".into(), Spec { spec }, String::new());
        assert!(object
            .ownership_problem()
            .unwrap()
            .contains("claims cluster \"east\""));
        object.metadata.name = "eastern-c".into();
        assert!(object.ownership_problem().is_some());
        object.metadata.name = "east-c".into();
        assert_eq!(object.ownership_problem(), None);
        object.kind = "Cluster".into();
        assert!(object.ownership_problem().is_some());
    }

    #[test]
    fn durations_print_like_go() {
        use std::time::Duration;
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_nanos(250)), "250ns");
        assert_eq!(go_duration(Duration::from_micros(80)), "80µs");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
