//! `join`: checks a cluster may join (readable broker-info, a free
//! cluster id, CIDRs no other cluster has), gives it an account on the
//! broker, and installs Strait into it. Nothing is created until every
//! check has passed; running it again changes nothing that is already so.
//!
//! "Already used": a cluster id is taken when the broker has the account
//! `strait-cluster-<ID>` annotated with another cluster's identity (the UID
//! of its `kube-system` namespace, which no other cluster shares), or has a
//! `Cluster` object `<ID>` but no such account (a cluster that joined some
//! other way, e.g. with subctl).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use super::apply::{applied, apply_as, apply_crds, Applied};
use super::broker_info::{BrokerAccess, BrokerInfo};
use super::globalnet_info::GlobalnetSettings;
use super::manifests::{self, BrokerKubeconfig, Manifests};
use super::networks::{cidr_conflicts, cluster_id_problem, overlaps};
use super::{broker_client, connect, globalnet_info, rbac, token, SetupError, FIELD_MANAGER};
use crate::broker::crd::SUBMARINER_GROUP;
use crate::broker::types::{ClusterSpec, CLUSTER_ID_LABEL};

/// The label that makes a node a gateway candidate, as in Submariner.
pub const GATEWAY_LABEL: &str = "submariner.io/gateway";
/// The field manager of the `Cluster` fields `join` writes: not the
/// agents' (`strait`), whose applies would otherwise drop the fields only
/// they set, and the other way round.
pub const JOIN_FIELD_MANAGER: &str = "strait-join";

#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub broker_info: PathBuf,
    pub cluster_id: String,
    pub kubeconfig: Option<PathBuf>,
    /// Empty: discovered from the nodes' `spec.podCIDRs`.
    pub cluster_cidrs: Vec<IpNet>,
    /// Empty: discovered from the `ServiceCIDR` objects.
    pub service_cidrs: Vec<IpNet>,
    pub image: Option<String>,
    pub namespace: String,
    /// How long the cluster's broker token lives.
    pub token_duration: Duration,
}

/// What `join` tells as it goes: objects applied, and other facts.
pub enum Event {
    Broker(Applied),
    Cluster(Applied),
    Note(String),
}

/// Reads and checks the broker-info file: the first thing `join` does.
pub fn read_broker_info(path: &std::path::Path) -> Result<BrokerAccess, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|error| SetupError::Io {
        op: "reading the broker-info file",
        path: path.into(),
        error,
    })?;
    let invalid = |error| SetupError::BrokerInfo {
        path: path.into(),
        error,
    };
    BrokerInfo::decode(&text)
        .and_then(|info| info.access())
        .map_err(invalid)
}

fn cluster_resource() -> ApiResource {
    ApiResource {
        group: SUBMARINER_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{SUBMARINER_GROUP}/v1"),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    }
}

fn service_monitor_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        plural: "servicemonitors".into(),
    }
}

/// What the checks found, for the steps after them.
/// A joined cluster's slice of the global range, and the range's settings.
pub struct GlobalSlice {
    pub cidr: ipnet::Ipv4Net,
    pub settings: GlobalnetSettings,
}

struct Checked {
    /// The joining cluster's identity (see the module's documentation).
    identity: String,
    cluster_cidrs: Vec<IpNet>,
    service_cidrs: Vec<IpNet>,
    nodes: Vec<Node>,
}

pub async fn join(opts: &JoinOptions, report: &mut dyn FnMut(Event)) -> Result<(), SetupError> {
    let access = read_broker_info(&opts.broker_info)?;
    if let Some(problem) = cluster_id_problem(&opts.cluster_id) {
        return Err(SetupError::Refused(problem));
    }
    let broker = broker_client(&access)?;
    let local = connect(opts.kubeconfig.as_deref()).await?.client;
    report(Event::Note(format!(
        "broker {} namespace {}",
        access.url, access.namespace
    )));
    let checked = check(opts, &access, &broker, &local, report).await?;
    let global = claim_global_cidr(&broker, &access.namespace, &opts.cluster_id, report).await?;
    register(opts, &checked, &access, &broker, global.as_ref(), report).await?;
    install(opts, &checked, &access, &local, global.as_ref(), report).await?;
    label_gateway(&local, &checked.nodes, report).await
}

/// Everything that may refuse the join, before anything is created.
async fn check(
    opts: &JoinOptions,
    access: &BrokerAccess,
    broker: &kube::Client,
    local: &kube::Client,
    report: &mut dyn FnMut(Event),
) -> Result<Checked, SetupError> {
    let id = opts.cluster_id.as_str();
    let bns = access.namespace.as_str();
    let identity = cluster_identity(local).await?;
    let account = rbac::cluster_account(id);
    let existing_account = Api::<ServiceAccount>::namespaced(broker.clone(), bns)
        .get_opt(&account)
        .await
        .map_err(SetupError::api(format!(
            "reading ServiceAccount {bns}/{account} on the broker"
        )))?;
    let others: Vec<ClusterSpec> = broker_clusters(broker, bns)
        .list(&Default::default())
        .await
        .map_err(SetupError::api("listing the broker's clusters"))?
        .items
        .iter()
        .filter_map(|c| serde_json::from_value(c.data["spec"].clone()).ok())
        .collect();
    let registered = others.iter().any(|c| c.cluster_id == id);
    if let Some(reason) = id_taken(id, &identity, existing_account.as_ref(), registered) {
        return Err(SetupError::Refused(reason));
    }

    let nodes = Api::<Node>::all(local.clone())
        .list(&Default::default())
        .await
        .map_err(SetupError::api("listing the cluster's nodes"))?
        .items;
    let cluster_cidrs = if opts.cluster_cidrs.is_empty() {
        let found = pod_cidrs(&nodes);
        if found.is_empty() {
            return Err(SetupError::Refused(
                "no node has spec.podCIDRs: give the pod network with --clustercidr".into(),
            ));
        }
        report(Event::Note(format!(
            "discovered cluster CIDRs {}",
            list(&found)
        )));
        found
    } else {
        opts.cluster_cidrs.clone()
    };
    let service_cidrs = if opts.service_cidrs.is_empty() {
        let found = discover_service_cidrs(local).await?;
        report(Event::Note(format!(
            "discovered service CIDRs {}",
            list(&found)
        )));
        found
    } else {
        opts.service_cidrs.clone()
    };

    let globalnet = Api::<ConfigMap>::namespaced(broker.clone(), bns)
        .get_opt(globalnet_info::NAME)
        .await
        .map_err(SetupError::api("reading the broker's globalnet settings"))?;
    let ours: Vec<IpNet> = cluster_cidrs
        .iter()
        .chain(&service_cidrs)
        .copied()
        .collect();
    let settings = match &globalnet {
        Some(map) => GlobalnetSettings::of(map).map_err(SetupError::Refused)?,
        None => None,
    };
    if let Some(settings) = settings {
        let range = IpNet::V4(settings.cidr_range);
        if let Some(clash) = ours.iter().find(|n| overlaps(n, &range)) {
            return Err(SetupError::Refused(format!(
                "the global range {range} overlaps this cluster's {clash}: global addresses must be outside every cluster CIDR"
            )));
        }
        report(Event::Note(
            "globalnet is on: overlapping CIDRs are allowed".into(),
        ));
    } else {
        let conflicts = cidr_conflicts(id, &ours, &others);
        if !conflicts.is_empty() {
            return Err(SetupError::Refused(format!(
                "CIDRs overlap another cluster's and globalnet is off: {}",
                conflicts.join("; ")
            )));
        }
    }
    Ok(Checked {
        identity,
        cluster_cidrs,
        service_cidrs,
        nodes,
    })
}

/// With globalnet on, the cluster's slice of the global range, claimed
/// once in the broker's `submariner-globalnet-info`: read, pick, write
/// back with the read's resourceVersion, so that of two clusters joining
/// at once the second one's write is refused and it picks again.
async fn claim_global_cidr(
    broker: &kube::Client,
    namespace: &str,
    id: &str,
    report: &mut dyn FnMut(Event),
) -> Result<Option<GlobalSlice>, SetupError> {
    const ATTEMPTS: usize = 32;
    let api = Api::<ConfigMap>::namespaced(broker.clone(), namespace);
    for _ in 0..ATTEMPTS {
        let Some(map) = api
            .get_opt(globalnet_info::NAME)
            .await
            .map_err(SetupError::api("reading the broker's globalnet settings"))?
        else {
            return Ok(None);
        };
        let Some(settings) = GlobalnetSettings::of(&map).map_err(SetupError::Refused)? else {
            return Ok(None);
        };
        let (cidr, update) =
            globalnet_info::claim(&map, &settings, id).map_err(SetupError::Refused)?;
        let written = match update {
            None => true,
            Some(update) => match api
                .replace(globalnet_info::NAME, &PostParams::default(), &update)
                .await
            {
                Ok(_) => true,
                // Another cluster claimed a slice since our read.
                Err(kube::Error::Api(status)) if status.code == 409 => false,
                Err(e) => return Err(SetupError::api("claiming a global CIDR")(e)),
            },
        };
        if written {
            report(Event::Note(format!("global CIDR {cidr}")));
            return Ok(Some(GlobalSlice { cidr, settings }));
        }
    }
    Err(SetupError::Refused(format!(
        "no global CIDR after {ATTEMPTS} attempts: too many clusters joining at once, try again"
    )))
}

/// The cluster's account on the broker, and its `Cluster` object: written
/// now, so that a cluster joining before our agents start sees our CIDRs.
async fn register(
    opts: &JoinOptions,
    checked: &Checked,
    access: &BrokerAccess,
    broker: &kube::Client,
    global: Option<&GlobalSlice>,
    report: &mut dyn FnMut(Event),
) -> Result<(), SetupError> {
    let id = opts.cluster_id.as_str();
    let bns = access.namespace.as_str();
    let account = rbac::cluster_account(id);
    let annotations = BTreeMap::from([(
        rbac::CLUSTER_IDENTITY_ANNOTATION.to_string(),
        checked.identity.clone(),
    )]);
    let sa = rbac::service_account(&account, bns, annotations);
    report(Event::Broker(
        applied(Api::namespaced(broker.clone(), bns), &sa).await?,
    ));
    let role = rbac::cluster_role(id, bns);
    report(Event::Broker(
        applied(Api::namespaced(broker.clone(), bns), &role).await?,
    ));
    let binding = rbac::role_binding(&account, bns);
    report(Event::Broker(
        applied(Api::namespaced(broker.clone(), bns), &binding).await?,
    ));
    let mut cluster = cluster_object(id, bns, &checked.cluster_cidrs, &checked.service_cidrs);
    if let Some(global) = global {
        cluster.data["spec"]["global_cidr"] = json!([global.cidr.to_string()]);
    }
    let (_, change) = apply_as(
        &broker_clusters(broker, bns),
        &cluster,
        "Cluster",
        JOIN_FIELD_MANAGER,
    )
    .await?;
    report(Event::Broker(change));
    Ok(())
}

/// Strait in the cluster: the CRDs, `deploy/` patched for it, and its
/// broker Secret.
async fn install(
    opts: &JoinOptions,
    checked: &Checked,
    access: &BrokerAccess,
    local: &kube::Client,
    global: Option<&GlobalSlice>,
    report: &mut dyn FnMut(Event),
) -> Result<(), SetupError> {
    let id = opts.cluster_id.as_str();
    let ns = opts.namespace.as_str();
    let m = Manifests::for_cluster(
        ns,
        opts.image.as_deref(),
        manifests::agent_config(
            id,
            ns,
            &checked.cluster_cidrs,
            &checked.service_cidrs,
            global,
        ),
    );
    let c = local;
    report(Event::Cluster(
        applied(Api::all(c.clone()), &m.namespace).await?,
    ));
    for crd in apply_crds(c).await? {
        report(Event::Cluster(crd));
    }
    let installed = [
        applied(Api::namespaced(c.clone(), ns), &m.service_account).await?,
        applied(Api::all(c.clone()), &m.cluster_role).await?,
        applied(Api::all(c.clone()), &m.cluster_role_binding).await?,
        applied(Api::namespaced(c.clone(), ns), &m.role).await?,
        applied(Api::namespaced(c.clone(), ns), &m.role_binding).await?,
        applied(Api::namespaced(c.clone(), ns), &m.config_map).await?,
    ];
    installed
        .into_iter()
        .for_each(|a| report(Event::Cluster(a)));

    let secrets = Api::<Secret>::namespaced(c.clone(), ns);
    let account = rbac::cluster_account(id);
    let token = cluster_token(
        &broker_access_for(access, &account, ""),
        &secrets,
        access,
        opts,
    )
    .await?;
    let kubeconfig = broker_access_for(access, &account, &token).to_yaml();
    let secret = manifests::broker_secret(ns, kubeconfig, &access.psk);
    report(Event::Cluster(applied(secrets, &secret).await?));
    report(Event::Cluster(
        applied(Api::namespaced(c.clone(), ns), &m.daemon_set).await?,
    ));
    report(Event::Cluster(
        applied(Api::namespaced(c.clone(), ns), &m.service).await?,
    ));

    let monitors =
        Api::<DynamicObject>::namespaced_with(c.clone(), ns, &service_monitor_resource());
    match apply_as(&monitors, &m.service_monitor, "ServiceMonitor", FIELD_MANAGER).await {
        Ok((_, change)) => report(Event::Cluster(change)),
        Err(SetupError::Api {
            error: kube::Error::Api(status),
            ..
        }) if status.code == 404 => report(Event::Note(
            "ServiceMonitor skipped: the cluster has no monitoring.coreos.com/v1 (Prometheus operator)"
                .into(),
        )),
        Err(e) => return Err(e),
    }
    Ok(())
}

fn broker_clusters(broker: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(broker.clone(), namespace, &cluster_resource())
}

/// A stable identity of the cluster behind `client`.
async fn cluster_identity(client: &kube::Client) -> Result<String, SetupError> {
    Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await
        .map_err(SetupError::api(
            "reading namespace kube-system (the cluster's identity)",
        ))?
        .metadata
        .uid
        .ok_or_else(|| SetupError::Refused("namespace kube-system has no uid".into()))
}

/// Why `id` cannot be ours: see the module's documentation.
fn id_taken(
    id: &str,
    identity: &str,
    account: Option<&ServiceAccount>,
    cluster_registered: bool,
) -> Option<String> {
    match account {
        Some(sa) => {
            let holder = sa
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(rbac::CLUSTER_IDENTITY_ANNOTATION));
            (holder.map(String::as_str) != Some(identity)).then(|| {
                format!(
                    "cluster id {id:?} is already used by another cluster (its broker account {} \
                     belongs to cluster identity {}); pick another --clusterid",
                    rbac::cluster_account(id),
                    holder.map(String::as_str).unwrap_or("unknown")
                )
            })
        }
        None => cluster_registered.then(|| {
            format!(
                "cluster id {id:?} is already used by another cluster (the broker has its Cluster \
                 object, not joined by strait); pick another --clusterid"
            )
        }),
    }
}

/// The nodes' pod CIDRs, merged.
fn pod_cidrs(nodes: &[Node]) -> Vec<IpNet> {
    let all: Vec<IpNet> = nodes
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .flat_map(|s| s.pod_cidrs.clone().unwrap_or_default())
        .filter_map(|c| c.parse().ok())
        .collect();
    IpNet::aggregate(&all)
}

async fn discover_service_cidrs(client: &kube::Client) -> Result<Vec<IpNet>, SetupError> {
    let cidrs = Api::<ServiceCIDR>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| {
            SetupError::Refused(format!(
                "cannot read ServiceCIDR objects (networking.k8s.io/v1, Kubernetes 1.33+): {e}; \
                 give the service network with --servicecidr"
            ))
        })?
        .items
        .into_iter()
        .filter_map(|s| s.spec)
        .flat_map(|s| s.cidrs.unwrap_or_default())
        .filter_map(|c| c.parse().ok())
        .collect::<Vec<IpNet>>();
    if cidrs.is_empty() {
        return Err(SetupError::Refused(
            "the cluster has no ServiceCIDR: give the service network with --servicecidr".into(),
        ));
    }
    Ok(IpNet::aggregate(&cidrs))
}

fn list(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `Cluster` fields `join` knows; the others (`color_codes`,
/// `global_cidr`) are left to whoever sets them.
fn cluster_object(id: &str, namespace: &str, pods: &[IpNet], services: &[IpNet]) -> DynamicObject {
    let mut object = DynamicObject::new(id, &cluster_resource()).within(namespace);
    object.metadata.labels = Some(BTreeMap::from([(
        CLUSTER_ID_LABEL.to_string(),
        id.to_string(),
    )]));
    object.data = json!({
        "spec": {
            "cluster_id": id,
            "cluster_cidr": pods.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "service_cidr": services.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }
    });
    object
}

fn broker_access_for<'a>(
    access: &'a BrokerAccess,
    account: &'a str,
    token: &'a str,
) -> BrokerKubeconfig<'a> {
    BrokerKubeconfig {
        url: &access.url,
        ca_pem: &access.ca_pem,
        namespace: &access.namespace,
        user: account,
        token,
    }
}

/// The token in the cluster's broker Secret when it is still good (so a
/// second run changes nothing), else a new one.
async fn cluster_token(
    wanted: &BrokerKubeconfig<'_>,
    secrets: &Api<Secret>,
    access: &BrokerAccess,
    opts: &JoinOptions,
) -> Result<String, SetupError> {
    let current = secrets
        .get_opt(manifests::BROKER_SECRET)
        .await
        .map_err(SetupError::api("reading the cluster's broker Secret"))?
        .and_then(|s| s.data)
        .and_then(|d| d.get(manifests::BROKER_KUBECONFIG_KEY).cloned())
        .and_then(|k| String::from_utf8(k.0).ok())
        .and_then(|yaml| wanted.token_in(&yaml))
        .filter(|t| token::fresh_enough(t, opts.token_duration, SystemTime::now()));
    if let Some(current) = current {
        let as_cluster = broker_client(&BrokerAccess {
            token: current.clone(),
            ..access.clone()
        })?;
        let user = rbac::service_account_user(&access.namespace, wanted.user);
        if token::whoami(&as_cluster).await.ok().as_deref() == Some(user.as_str()) {
            return Ok(current);
        }
    }
    let broker = broker_client(access)?;
    Ok(
        token::request(&broker, &access.namespace, wanted.user, opts.token_duration)
            .await?
            .token,
    )
}

/// How much a node looks like a place for the gateway: schedulable, ready,
/// untainted, not the control plane.
fn gateway_fitness(node: &Node) -> u8 {
    let spec = node.spec.clone().unwrap_or_default();
    let schedulable = !spec.unschedulable.unwrap_or(false);
    let untainted = !spec
        .taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute");
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let worker = !node
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"));
    u8::from(schedulable) * 8 + u8::from(ready) * 4 + u8::from(untainted) * 2 + u8::from(worker)
}

/// The node to label as gateway: the fittest, the first by name among
/// equals; none when one is labelled already.
fn gateway_to_label(nodes: &[Node]) -> Option<&Node> {
    let labelled = nodes.iter().any(|n| {
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_LABEL))
            .is_some_and(|v| v == "true")
    });
    if labelled {
        return None;
    }
    nodes.iter().max_by(|a, b| {
        gateway_fitness(a)
            .cmp(&gateway_fitness(b))
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    })
}

async fn label_gateway(
    client: &kube::Client,
    nodes: &[Node],
    report: &mut dyn FnMut(Event),
) -> Result<(), SetupError> {
    let Some(node) = gateway_to_label(nodes) else {
        let gateways: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                n.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(GATEWAY_LABEL))
            })
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let note = if gateways.is_empty() {
            format!("no nodes yet: label one {GATEWAY_LABEL}=true")
        } else {
            format!(
                "gateway node {}: already labelled {GATEWAY_LABEL}=true",
                gateways.join(",")
            )
        };
        report(Event::Note(note));
        return Ok(());
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    // Applied as our own field: the node's other labels stay as they are.
    let label = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { GATEWAY_LABEL: "true" } },
    });
    Api::<Node>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(label),
        )
        .await
        .map_err(SetupError::api(format!("labelling node {name}")))?;
    report(Event::Note(format!(
        "gateway node {name}: labelled {GATEWAY_LABEL}=true"
    )));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, pods: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(pods.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_cluster_object_holds_only_what_join_knows() {
        let object = cluster_object(
            "east",
            "broker",
            &["10.1.0.0/16".parse().unwrap()],
            &["10.96.0.0/16".parse().unwrap()],
        );
        assert_eq!(
            object.data["spec"],
            json!({ "cluster_id": "east", "cluster_cidr": ["10.1.0.0/16"], "service_cidr": ["10.96.0.0/16"] })
        );
        assert_eq!(object.metadata.labels.unwrap()[CLUSTER_ID_LABEL], "east");
        assert_eq!(object.metadata.namespace.as_deref(), Some("broker"));
    }

    #[test]
    fn pod_cidrs_merge_the_nodes_ranges() {
        let nodes = [
            node("a", &["10.244.0.0/24"]),
            node("b", &["10.244.1.0/24", "fd00:10:244:1::/64"]),
            node("c", &[]),
        ];
        let merged: Vec<String> = pod_cidrs(&nodes).iter().map(ToString::to_string).collect();
        assert_eq!(merged, ["10.244.0.0/23", "fd00:10:244:1::/64"]);
    }

    #[test]
    fn the_gateway_is_a_schedulable_ready_worker() {
        let mut control = node("a-control", &[]);
        control.metadata.labels = Some(BTreeMap::from([(
            "node-role.kubernetes.io/control-plane".into(),
            String::new(),
        )]));
        control.spec.as_mut().unwrap().taints = Some(vec![Taint {
            effect: "NoSchedule".into(),
            key: "node-role.kubernetes.io/control-plane".into(),
            ..Default::default()
        }]);
        let mut cordoned = node("b-cordoned", &[]);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let ready = NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let mut worker_d = node("d-worker", &[]);
        worker_d.status = Some(ready.clone());
        let mut worker_c = node("c-worker", &[]);
        worker_c.status = Some(ready);
        let nodes = [control, cordoned, worker_d, worker_c.clone()];
        let chosen = gateway_to_label(&nodes).unwrap();
        assert_eq!(chosen.metadata.name.as_deref(), Some("c-worker"));

        let mut labelled = nodes.to_vec();
        labelled[0]
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(GATEWAY_LABEL.into(), "true".into());
        assert!(gateway_to_label(&labelled).is_none());
        assert!(gateway_to_label(&[]).is_none());
    }

    #[test]
    fn an_id_is_taken_by_another_identity_or_a_foreign_cluster_object() {
        let sa = |identity: Option<&str>| {
            rbac::service_account(
                "strait-cluster-east",
                "b",
                identity
                    .map(|i| {
                        BTreeMap::from([(
                            rbac::CLUSTER_IDENTITY_ANNOTATION.to_string(),
                            i.to_string(),
                        )])
                    })
                    .unwrap_or_default(),
            )
        };
        assert_eq!(id_taken("east", "uid-1", None, false), None);
        assert_eq!(
            id_taken("east", "uid-1", Some(&sa(Some("uid-1"))), true),
            None
        );
        let taken = id_taken("east", "uid-2", Some(&sa(Some("uid-1"))), true).unwrap();
        assert!(taken.contains("already used by another cluster"), "{taken}");
        assert!(taken.contains("uid-1"), "{taken}");
        assert!(id_taken("east", "uid-1", Some(&sa(None)), false).is_some());
        assert!(id_taken("east", "uid-1", None, true)
            .unwrap()
            .contains("not joined by strait"));
    }
}
