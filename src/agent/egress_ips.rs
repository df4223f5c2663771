//! Globalnet's egress pools in Kubernetes mode. Submariner's
//! `GlobalEgressIP`, in a namespace, gives the pods of that namespace (or
//! those its `podSelector` picks) a pool of `numberOfIPs` global addresses
//! of their own; the cluster-scoped `ClusterGlobalEgressIP` named
//! `cluster-egress.submariner.io` sizes the pool of every other pod
//! (`numGlobalIPs`). Allocations are written back to their status
//! (`allocatedIPs`, an `Allocated` condition).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;

use crate::broker::crd::SUBMARINER_GROUP;
use crate::broker::globalnet_types::{ClusterGlobalEgressIPSpec, GlobalEgressIPSpec};
use crate::broker::kube::{Cache, Watched, FIELD_MANAGER};
use crate::plan::globalnet::Pool;

fn global_egress_ip_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SUBMARINER_GROUP, "v1", "GlobalEgressIP"),
        "globalegressips",
    )
}

fn cluster_egress_ip_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SUBMARINER_GROUP, "v1", "ClusterGlobalEgressIP"),
        "clusterglobalegressips",
    )
}

/// The one `ClusterGlobalEgressIP` that counts, as in Submariner.
pub const CLUSTER_EGRESS_NAME: &str = "cluster-egress.submariner.io";

/// The cluster pool's size: what `cluster-egress.submariner.io` asks for,
/// or all `reserved` addresses while it does not exist or asks for what
/// cannot be had; and the `ClusterGlobalEgressIP`s refused, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPoolRequest {
    pub count: u32,
    pub refused: BTreeMap<String, String>,
}

impl ClusterPoolRequest {
    /// All `reserved` addresses, nothing refused.
    pub fn all(reserved: u32) -> ClusterPoolRequest {
        ClusterPoolRequest {
            count: reserved,
            refused: BTreeMap::new(),
        }
    }
}

/// Submariner's limit on `numberOfIPs` and `numGlobalIPs`, which its CRDs
/// (and ours) enforce.
pub const MAX_POOL: i64 = 20;

fn pod_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

/// What one `GlobalEgressIP` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRequest {
    pub count: u32,
    /// The IPv4 addresses of the pods it selects, in this cluster.
    pub sources: Vec<Ipv4Addr>,
}

/// The local cluster's ClusterGlobalEgressIPs, and its GlobalEgressIPs and
/// Pods in every namespace, watched.
pub struct EgressIps {
    client: Client,
    cluster: Watched,
    requests: Watched,
    pods: Watched,
}

impl EgressIps {
    pub fn start(client: Client, changes: &watch::Sender<u64>) -> EgressIps {
        let watch = |resource: ApiResource| Watched::everywhere(&client, &resource, changes);
        EgressIps {
            cluster: watch(cluster_egress_ip_resource()),
            requests: watch(global_egress_ip_resource()),
            pods: watch(pod_resource()),
            client,
        }
    }

    /// The pools asked for by `namespace/name`, and the refused requests
    /// with the reason.
    pub fn current(
        &self,
        local: &[IpNet],
    ) -> (BTreeMap<String, PoolRequest>, BTreeMap<String, String>) {
        requests_of(&self.requests.objects(), &self.pods.objects(), local)
    }

    /// The cluster pool's size, of at most `reserved` addresses.
    pub fn cluster_pool(&self, reserved: u32) -> ClusterPoolRequest {
        cluster_pool_of(&self.cluster.objects(), reserved)
    }

    /// Writes the cluster pool to `cluster-egress.submariner.io`'s status,
    /// creating the object (asking for all `reserved` addresses) when there
    /// is none, as Submariner does; and the refusals to theirs.
    pub async fn report_cluster_pool(
        &self,
        pool: Pool,
        reserved: u32,
        refused: &BTreeMap<String, String>,
    ) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &cluster_egress_ip_resource());
        let exists = self.cluster.objects().contains_key(CLUSTER_EGRESS_NAME);
        if !exists {
            let object = json!({
                "apiVersion": "submariner.io/v1",
                "kind": "ClusterGlobalEgressIP",
                "metadata": { "name": CLUSTER_EGRESS_NAME },
                "spec": { "numGlobalIPs": reserved },
            });
            let params = PatchParams::apply(FIELD_MANAGER);
            api.patch(CLUSTER_EGRESS_NAME, &params, &Patch::Apply(object))
                .await?;
        }
        // A refused cluster-egress still shows the pool in use (all the
        // reserved addresses); the other objects get nothing.
        let in_use: Vec<String> = pool.addresses().map(|ip| ip.to_string()).collect();
        let cluster_condition = match refused.get(CLUSTER_EGRESS_NAME) {
            Some(reason) => condition(false, "Refused", reason),
            None => condition(true, "Success", ""),
        };
        let outcomes = refused
            .iter()
            .filter(|(name, _)| name.as_str() != CLUSTER_EGRESS_NAME)
            .map(|(name, reason)| {
                (
                    name.as_str(),
                    Vec::new(),
                    condition(false, "Refused", reason),
                )
            })
            .chain(std::iter::once((
                CLUSTER_EGRESS_NAME,
                in_use,
                cluster_condition,
            )));
        for (name, ips, condition) in outcomes {
            let metadata = json!({ "name": name });
            write_status(&api, "ClusterGlobalEgressIP", metadata, ips, condition).await?;
        }
        Ok(())
    }

    /// Writes each request's outcome to its status.
    pub async fn report(
        &self,
        pools: &BTreeMap<String, Pool>,
        refused: &BTreeMap<String, String>,
    ) -> Result<(), kube::Error> {
        let outcomes = pools
            .iter()
            .map(|(key, pool)| {
                let ips: Vec<String> = pool.addresses().map(|ip| ip.to_string()).collect();
                (key, ips, condition(true, "Success", ""))
            })
            .chain(
                refused
                    .iter()
                    .map(|(key, reason)| (key, Vec::new(), condition(false, "Refused", reason))),
            );
        for (key, ips, condition) in outcomes {
            // A request deleted meanwhile has no status to write.
            if !self.requests.objects().contains_key(key) {
                continue;
            }
            let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &global_egress_ip_resource());
            let metadata = json!({ "name": name, "namespace": namespace });
            write_status(&api, "GlobalEgressIP", metadata, ips, condition).await?;
        }
        Ok(())
    }
}

/// Applies the status of an egress pool: its addresses and one condition.
async fn write_status(
    api: &Api<DynamicObject>,
    kind: &str,
    metadata: serde_json::Value,
    ips: Vec<String>,
    condition: serde_json::Value,
) -> Result<(), kube::Error> {
    let name = metadata["name"].as_str().unwrap_or_default().to_string();
    let status = json!({
        "apiVersion": "submariner.io/v1",
        "kind": kind,
        "metadata": metadata,
        "status": { "allocatedIPs": ips, "conditions": [condition] },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&name, &params, &Patch::Apply(status))
        .await?;
    Ok(())
}

fn condition(ok: bool, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "type": "Allocated",
        "status": if ok { "True" } else { "False" },
        "lastTransitionTime": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "reason": reason,
        "message": message,
    })
}

fn cluster_pool_of(objects: &Cache, reserved: u32) -> ClusterPoolRequest {
    let mut pool = ClusterPoolRequest::all(reserved);
    for (name, object) in objects {
        if name != CLUSTER_EGRESS_NAME {
            let reason =
                format!("only the ClusterGlobalEgressIP named {CLUSTER_EGRESS_NAME} is used");
            pool.refused.insert(name.clone(), reason);
            continue;
        }
        let spec = serde_json::from_value::<ClusterGlobalEgressIPSpec>(object.data["spec"].clone());
        // Submariner's default when the field is left out.
        match spec.map(|s| s.num_global_ips.unwrap_or(1)) {
            Ok(n) if n >= 1 && n <= i64::from(reserved) => pool.count = n as u32,
            Ok(n) => {
                let reason = format!(
                    "numGlobalIPs {n} is not between 1 and the {reserved} addresses \
                     globalnet.egress_ips reserves for the cluster's pool"
                );
                pool.refused.insert(name.clone(), reason);
            }
            Err(e) => {
                pool.refused.insert(name.clone(), format!("malformed: {e}"));
            }
        }
    }
    pool
}

fn requests_of(
    requests: &Cache,
    pods: &Cache,
    local: &[IpNet],
) -> (BTreeMap<String, PoolRequest>, BTreeMap<String, String>) {
    let mut wanted = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for (key, object) in requests {
        match request_of(object, pods, local) {
            Ok(request) => {
                wanted.insert(key.clone(), request);
            }
            Err(reason) => {
                refused.insert(key.clone(), reason);
            }
        }
    }
    (wanted, refused)
}

fn request_of(
    object: &DynamicObject,
    pods: &Cache,
    local: &[IpNet],
) -> Result<PoolRequest, String> {
    let spec: GlobalEgressIPSpec = serde_json::from_value(object.data["spec"].clone())
        .map_err(|e| format!("malformed: {e}"))?;
    let count = match spec.number_of_ips.unwrap_or(1) {
        n @ 1..=MAX_POOL => n as u32,
        n => return Err(format!("numberOfIPs {n} is not between 1 and {MAX_POOL}")),
    };
    let selector = spec.pod_selector.unwrap_or_default();
    selector
        .validate()
        .map_err(|e| format!("podSelector: {e}"))?;
    let namespace = object.metadata.namespace.as_deref().unwrap_or_default();
    let sources = pods
        .values()
        .filter(|pod| pod.metadata.namespace.as_deref() == Some(namespace))
        .filter(|pod| selector.matches(&pod.metadata.labels.clone().unwrap_or_default()))
        .filter_map(|pod| {
            pod.data["status"]["podIP"]
                .as_str()?
                .parse::<Ipv4Addr>()
                .ok()
        })
        .filter(|ip| local.iter().any(|n| n.contains(&IpAddr::V4(*ip))))
        .collect();
    Ok(PoolRequest { count, sources })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(
        resource: &ApiResource,
        name: &str,
        labels: &[(&str, &str)],
        data: serde_json::Value,
    ) -> (String, DynamicObject) {
        let mut o = DynamicObject::new(name, resource).within("shop");
        o.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o.data = data;
        (format!("shop/{name}"), o)
    }

    #[test]
    fn requests_pick_their_namespaces_pods_by_label() {
        let local: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let pod = |name: &str, app: &str, ip: &str| {
            object(
                &pod_resource(),
                name,
                &[("app", app)],
                json!({ "status": { "podIP": ip } }),
            )
        };
        let pods: Cache = [
            pod("db-0", "db", "10.1.1.2"),
            pod("web-0", "web", "10.1.1.3"),
            pod("db-x", "db", "192.0.2.1"),
        ]
        .into_iter()
        .collect();
        let request = |name: &str, spec: serde_json::Value| {
            object(
                &global_egress_ip_resource(),
                name,
                &[],
                json!({ "spec": spec }),
            )
        };
        let requests: Cache = [
            request("db", json!({ "numberOfIPs": 2, "podSelector": { "matchLabels": { "app": "db" } } })),
            request("all", json!({})),
            request("huge", json!({ "numberOfIPs": 100000 })),
            request("not-web", json!({ "podSelector": { "matchExpressions": [
                { "key": "app", "operator": "Exists" },
                { "key": "app", "operator": "NotIn", "values": ["web"] },
            ] } })),
            request("odd", json!({ "podSelector": { "matchExpressions": [{ "key": "app", "operator": "Near", "values": ["db"] }] } })),
            request("bare-in", json!({ "podSelector": { "matchExpressions": [{ "key": "app", "operator": "In" }] } })),
        ]
        .into_iter()
        .collect();
        let (wanted, refused) = requests_of(&requests, &pods, &local);
        assert_eq!(
            wanted["shop/db"],
            PoolRequest {
                count: 2,
                sources: vec![Ipv4Addr::new(10, 1, 1, 2)]
            }
        );
        assert_eq!(wanted["shop/all"].count, 1);
        assert_eq!(wanted["shop/all"].sources.len(), 2);
        assert!(refused["shop/huge"].contains("numberOfIPs"));
        assert_eq!(wanted["shop/not-web"].sources, [Ipv4Addr::new(10, 1, 1, 2)]);
        assert!(refused["shop/odd"].contains("Near"), "{refused:?}");
        assert!(
            refused["shop/bare-in"].contains("needs values"),
            "{refused:?}"
        );
    }

    #[test]
    fn the_cluster_pool_follows_cluster_egress_within_the_reserved_addresses() {
        let resource = cluster_egress_ip_resource();
        let object = |name: &str, spec: serde_json::Value| {
            let mut o = DynamicObject::new(name, &resource);
            o.data = json!({ "spec": spec });
            (name.to_string(), o)
        };
        let pool = |objects: Vec<(String, DynamicObject)>| {
            cluster_pool_of(&objects.into_iter().collect(), 8)
        };
        // None yet: every reserved address.
        assert_eq!(pool(vec![]).count, 8);
        let asked = pool(vec![
            object(CLUSTER_EGRESS_NAME, json!({ "numGlobalIPs": 3 })),
            object("mine", json!({ "numGlobalIPs": 5 })),
        ]);
        assert_eq!(asked.count, 3);
        assert!(asked.refused["mine"].contains(CLUSTER_EGRESS_NAME));
        assert!(!asked.refused.contains_key(CLUSTER_EGRESS_NAME));
        // Left out, the field means one address, as in Submariner.
        assert_eq!(pool(vec![object(CLUSTER_EGRESS_NAME, json!({}))]).count, 1);
        for spec in [
            json!({ "numGlobalIPs": 9 }),
            json!({ "numGlobalIPs": 0 }),
            json!({ "numGlobalIPs": "two" }),
        ] {
            let refused = pool(vec![object(CLUSTER_EGRESS_NAME, spec.clone())]);
            assert_eq!(refused.count, 8, "{spec}");
            assert!(refused.refused.contains_key(CLUSTER_EGRESS_NAME), "{spec}");
        }
    }
}
