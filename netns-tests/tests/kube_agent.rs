//! Agents in Kubernetes mode: every simulated cluster has a real
//! kube-apiserver (in its LAN namespace) holding its Node objects, the
//! broker is a third one (on the WAN). Gateways find each other through
//! the broker's API, candidates elect the active gateway by a Lease, and
//! the dataplane outlives a broker outage.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus, Pod};
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use strait_netns_tests::cluster::{ClusterSet, ClusterSpec, NodeSpec, Options, ECHO_PORT};
use strait_netns_tests::globalnet::probe_counts;
use strait_netns_tests::kube::{
    block_on_in_netns, create_namespace, install_crds, ApiServer, ApiServerOptions,
};
use strait_netns_tests::wait_until;

const BROKER_NAMESPACE: &str = "submariner-k8s-broker";
const STRAIT_NAMESPACE: &str = "strait";
/// The broker API server's address on the WAN bridge.
const BROKER_IP: &str = "198.51.100.250";
/// Short lease times: a crashed gateway is replaced within seconds.
const LEASE: &str =
    "  lease: { duration_ms: 3000, renew_deadline_ms: 2000, retry_period_ms: 500 }\n";

/// A cluster set whose clusters and broker are real API servers. Fields
/// drop in order: the API servers before the namespaces they run in.
struct KubeSet {
    locals: BTreeMap<String, ApiServer>,
    broker: ApiServer,
    set: ClusterSet,
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("submariner.io", "v1", kind), plural)
}

/// The objects of a kind in a namespace; none while the server is away.
async fn list(client: Client, namespace: &str, resource: ApiResource) -> Vec<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(client, namespace, &resource)
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// A client; made inside the runtime that will drive it.
fn client_of(config: kube::Config) -> Client {
    Client::try_from(config).expect("building a kube client")
}

/// A kubeconfig of `server`'s admin whose context namespace is `namespace`.
fn kubeconfig_in(server: &ApiServer, namespace: &str) -> String {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&server.admin_kubeconfig()).expect("parsing a kubeconfig");
    let context = &mut config["contexts"][0]["context"];
    context["namespace"] = serde_yaml::Value::String(namespace.into());
    serde_yaml::to_string(&config).expect("writing a kubeconfig")
}

/// Registers a node as a kubelet would: its InternalIP, and the gateway
/// label on candidates.
async fn register_node(client: Client, name: String, ip: String, candidate: bool) {
    let nodes: Api<Node> = Api::all(client);
    let mut labels = BTreeMap::new();
    if candidate {
        labels.insert("submariner.io/gateway".to_string(), "true".to_string());
    }
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
    let status = Node {
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: ip,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("setting the status of Node {name}: {e}"));
}

/// Turns a node's generated (directory broker) configuration into
/// Kubernetes mode: the broker API, the local API, and no address or
/// gateway flag (the Node object has them).
fn kube_mode_config(text: &str, broker_kubeconfig: &str, local_kubeconfig: &str) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("  ip: ") && !l.starts_with("  gateway: "))
        .map(|l| match l.starts_with("broker: ") {
            true => format!("broker: kube:{broker_kubeconfig}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    out.push_str(&format!(
        "kubernetes:\n  kubeconfig: {local_kubeconfig}\n  namespace: {STRAIT_NAMESPACE}\n{LEASE}"
    ));
    out
}

impl KubeSet {
    /// Builds the clusters, starts the broker API server and one per
    /// cluster, registers the nodes and starts every agent.
    fn start(specs: &[ClusterSpec]) -> KubeSet {
        KubeSet::start_with(specs, Options::new(), false)
    }

    /// [`KubeSet::start`] with `options`; with `globalnet`, cluster `k`
    /// gets the global CIDR 242.(k-1).0.0/16 (as `strait join` writes it).
    fn start_with(specs: &[ClusterSpec], options: Options, globalnet: bool) -> KubeSet {
        let mut set = ClusterSet::empty(options);
        for spec in specs {
            set.add_cluster(spec.clone());
        }
        set.wan().ok(&[
            "ip",
            "addr",
            "add",
            &format!("{BROKER_IP}/24"),
            "dev",
            "br0",
        ]);
        let broker = ApiServer::start_with(
            ApiServerOptions::default()
                .tag("broker")
                .in_netns(set.wan().name(), BROKER_IP.parse().unwrap()),
        );
        let config = broker.admin_config();
        block_on_in_netns(set.wan().name(), move || async move {
            let client = client_of(config);
            install_crds(&client).await;
            create_namespace(&client, BROKER_NAMESPACE).await
        });
        let broker_kubeconfig = set.root().join("broker.kubeconfig");
        std::fs::write(&broker_kubeconfig, kubeconfig_in(&broker, BROKER_NAMESPACE)).unwrap();

        let mut locals = BTreeMap::new();
        for spec in specs {
            let cluster = set.cluster(&spec.id);
            let api_ip = format!("172.16.{}.250", spec.index);
            cluster
                .lan()
                .ok(&["ip", "addr", "add", &format!("{api_ip}/24"), "dev", "br0"]);
            let local = ApiServer::start_with(
                ApiServerOptions::default()
                    .tag(&spec.id)
                    .in_netns(cluster.lan().name(), api_ip.parse::<IpAddr>().unwrap()),
            );
            let config = local.admin_config();
            let nodes: Vec<(String, String, bool)> = cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.lan_ip.to_string(), n.gateway))
                .collect();
            block_on_in_netns(cluster.lan().name(), move || async move {
                let client = client_of(config);
                install_crds(&client).await;
                create_namespace(&client, STRAIT_NAMESPACE).await;
                for (name, ip, candidate) in nodes {
                    register_node(client.clone(), name, ip, candidate).await;
                }
            });
            let local_kubeconfig = set.root().join(format!("{}.kubeconfig", spec.id));
            std::fs::write(&local_kubeconfig, kubeconfig_in(&local, STRAIT_NAMESPACE)).unwrap();
            for node in &cluster.nodes {
                let text = std::fs::read_to_string(&node.config_path).unwrap();
                let mut text = kube_mode_config(
                    &text,
                    &broker_kubeconfig.to_string_lossy(),
                    &local_kubeconfig.to_string_lossy(),
                );
                if globalnet {
                    text.push_str(&format!(
                        "globalnet:\n  enabled: true\n  global_cidr: 242.{}.0.0/16\n",
                        spec.index - 1
                    ));
                }
                std::fs::write(&node.config_path, text).unwrap();
            }
            locals.insert(spec.id.clone(), local);
        }
        let mut kube_set = KubeSet {
            locals,
            broker,
            set,
        };
        for spec in specs {
            kube_set.set.start_cluster(&spec.id);
        }
        for spec in specs {
            kube_set.set.wait_cluster_ready(&spec.id);
        }
        kube_set
    }

    /// Runs `f` with an admin client of cluster `id`'s API server.
    fn local<T: Send + 'static, Fut: std::future::Future<Output = T>>(
        &self,
        id: &str,
        f: impl FnOnce(Client) -> Fut + Send + 'static,
    ) -> T {
        let config = self.locals[id].admin_config();
        block_on_in_netns(self.set.cluster(id).lan().name(), move || async move {
            f(client_of(config)).await
        })
    }

    /// Cluster `id`'s Gateway objects: (node name, haStatus, connected
    /// remote clusters).
    fn gateways(&self, id: &str) -> Vec<(String, String, Vec<String>)> {
        self.local(id, |client| async move {
            list(client, STRAIT_NAMESPACE, resource("Gateway", "gateways"))
                .await
                .into_iter()
                .map(|g| {
                    let status = &g.data["status"];
                    let connected = status["connections"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|c| c["status"] == "connected")
                        .filter_map(|c| c["endpoint"]["cluster_id"].as_str())
                        .map(String::from)
                        .collect();
                    (
                        status["localEndpoint"]["hostname"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        status["haStatus"].as_str().unwrap_or_default().to_string(),
                        connected,
                    )
                })
                .collect()
        })
    }

    /// The node whose Gateway says `active`, once exactly one does and it
    /// is connected to every cluster in `remotes`.
    fn wait_active_connected(&self, id: &str, remotes: &[&str], limit: Duration) -> String {
        let mut active = String::new();
        wait_until(
            &format!("one active gateway of {id} connected to {remotes:?}"),
            limit,
            || {
                let gateways = self.gateways(id);
                let actives: Vec<_> = gateways.iter().filter(|g| g.1 == "active").collect();
                match actives.as_slice() {
                    [one] if remotes.iter().all(|r| one.2.iter().any(|c| c == r)) => {
                        active = one.0.clone();
                        true
                    }
                    _ => false,
                }
            },
        );
        active
    }

    fn lease_holder(&self, id: &str) -> Option<String> {
        self.local(id, |client| async move {
            Api::<Lease>::namespaced(client, STRAIT_NAMESPACE)
                .get("strait-gateway")
                .await
                .ok()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty())
        })
    }

    /// The names of cluster `id`'s Endpoint objects in the broker.
    fn broker_endpoints(&self, id: &str) -> Vec<String> {
        let config = self.broker.admin_config();
        let id = id.to_string();
        block_on_in_netns(self.set.wan().name(), move || async move {
            let client = client_of(config);
            list(client, BROKER_NAMESPACE, resource("Endpoint", "endpoints"))
                .await
                .into_iter()
                .filter(|e| e.data["spec"]["cluster_id"] == id.as_str())
                .filter_map(|e| e.metadata.name)
                .collect()
        })
    }
}

#[test]
fn gateways_meet_through_the_broker_api_and_candidates_elect_one_active() {
    let mut kube = KubeSet::start(&[
        ClusterSpec::new(
            "east",
            1,
            vec![NodeSpec::gateway("gw1", 1), NodeSpec::gateway("gw2", 1)],
        ),
        ClusterSpec::single_gateway("west", 2, 1),
    ]);
    let limit = Duration::from_secs(60);
    kube.wait_active_connected("west", &["east"], limit);
    let first = kube.wait_active_connected("east", &["west"], limit);
    let gateways = kube.gateways("east");
    assert_eq!(gateways.len(), 2, "{gateways:?}");
    let standby = gateways.iter().find(|g| g.0 != first).unwrap();
    assert_eq!(standby.1, "passive", "{gateways:?}");
    assert_eq!(kube.lease_holder("east").as_deref(), Some(first.as_str()));
    // Both east pods (one on each candidate) reach west's pod and back.
    let west_pod = kube.set.cluster("west").pod(0);
    for n in 0..2 {
        let east_pod = kube.set.cluster("east").pod(n);
        assert!(east_pod.ping(west_pod), "east pod {n} cannot reach west");
        assert!(west_pod.ping(east_pod), "west cannot reach east pod {n}");
    }

    // The active gateway stops (releasing its lease): the other takes over.
    let (clean, log) = kube.set.cluster_mut("east").node_mut(&first).stop_agent();
    assert!(clean, "the active gateway did not stop cleanly:\n{log}");
    let second = kube.wait_active_connected("east", &["west"], limit);
    assert_ne!(second, first);
    println!("FAILOVER: {first} -> {second}");
    assert_eq!(kube.lease_holder("east").as_deref(), Some(second.as_str()));
    wait_until(
        "the broker to hold only the new gateway's endpoint",
        limit,
        || kube.broker_endpoints("east").len() == 1,
    );
    // The new active gateway's pod reaches west at once; the former one's
    // node, its agent back as a candidate, stands by and routes its pod
    // to the new active gateway.
    kube.set.cluster_mut("east").node_mut(&first).start_agent();
    wait_until("the former gateway to stand by", limit, || {
        kube.gateways("east")
            .iter()
            .any(|g| g.0 == first && g.1 == "passive")
    });
    assert_eq!(kube.lease_holder("east").as_deref(), Some(second.as_str()));
    let west_pod = kube.set.cluster("west").pod(0);
    for node in [&second, &first] {
        let east_pod = &kube.set.cluster("east").node(node).pods[0];
        wait_until(
            &format!("east's pod on {node} to reach west"),
            limit,
            || east_pod.ping_once(west_pod.ip, 2),
        );
        assert!(
            west_pod.ping(east_pod),
            "west cannot reach east's pod on {node}"
        );
    }
}

#[test]
fn traffic_outlives_a_broker_outage_and_a_change_made_meanwhile_is_picked_up() {
    let mut kube = KubeSet::start(&[
        ClusterSpec::single_gateway("east", 1, 1),
        ClusterSpec::single_gateway("west", 2, 1),
        ClusterSpec::single_gateway("north", 3, 1),
    ]);
    // North stays out until the broker is gone.
    kube.set
        .cluster_mut("north")
        .node_mut("north-gw")
        .stop_agent();
    let limit = Duration::from_secs(60);
    kube.wait_active_connected("east", &["west"], limit);
    kube.wait_active_connected("west", &["east"], limit);

    kube.broker.stop();
    // North joins while the broker is down: it cannot publish yet.
    kube.set
        .cluster_mut("north")
        .node_mut("north-gw")
        .start_agent();
    let east_pod = kube.set.cluster("east").pod(0);
    let west_pod = kube.set.cluster("west").pod(0);
    // 30 s of pings at 5 per second through the outage.
    let out = east_pod.ns.exec(&[
        "ping",
        "-q",
        "-i",
        "0.2",
        "-c",
        "150",
        "-W",
        "1",
        &west_pod.ip.to_string(),
    ]);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let counts = summary
        .lines()
        .find(|l| l.contains(" received"))
        .unwrap_or_default();
    println!("OUTAGE: {counts}");
    let received: u32 = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        received >= 145,
        "pings lost while the broker was down:\n{summary}"
    );
    let gateways = kube.gateways("east");
    assert!(
        gateways.iter().any(|g| g.2.contains(&"west".to_string())),
        "east dropped its connection to west during the outage: {gateways:?}"
    );

    kube.broker.restart();
    for (id, remotes) in [
        ("east", ["west", "north"]),
        ("west", ["east", "north"]),
        ("north", ["east", "west"]),
    ] {
        kube.wait_active_connected(id, &remotes, limit);
    }
    let north_pod = kube.set.cluster("north").pod(0);
    assert!(east_pod.ping(north_pod));
    assert!(north_pod.ping(west_pod));
}

/// Creates, in namespace `shop` of a cluster's API, Service `name` on
/// `port` with one ready endpoint `pod:port` (what the endpoints
/// controller would write) and, with `exported`, its ServiceExport.
async fn serve(client: Client, name: &str, pod: Ipv4Addr, port: u16, exported: bool) {
    let apply = |resource: ApiResource, object: serde_json::Value| {
        let client = client.clone();
        async move {
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let api: Api<DynamicObject> = Api::namespaced_with(client, "shop", &resource);
            api.patch(
                &name,
                &PatchParams::apply("strait-netns-tests").force(),
                &Patch::Apply(object),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
        }
    };
    let gvk = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    apply(
        gvk("", "v1", "Service", "services"),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "ports": [{ "name": "echo", "port": port, "targetPort": port }] },
        }),
    )
    .await;
    apply(
        gvk("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("{name}-1"), "namespace": "shop",
                          "labels": { "kubernetes.io/service-name": name } },
            "addressType": "IPv4",
            "ports": [{ "name": "echo", "port": port, "protocol": "TCP" }],
            "endpoints": [{ "addresses": [pod.to_string()], "conditions": { "ready": true } }],
        }),
    )
    .await;
    if exported {
        export(client, name).await;
    }
}

async fn export(client: Client, name: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        "shop",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport"),
            "serviceexports",
        ),
    );
    let object = serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": { "name": name, "namespace": "shop" },
    });
    api.patch(
        name,
        &PatchParams::apply("strait-netns-tests").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("exporting {name}: {e}"));
}

/// The `GlobalIngressIP` of `shop/name`'s address, and the `Valid`
/// condition of its ServiceExport: (status, message).
async fn export_state(
    client: Client,
    name: String,
) -> (Option<Ipv4Addr>, Option<(String, String)>) {
    let get = |resource: ApiResource| {
        let client = client.clone();
        let name = name.clone();
        async move {
            Api::<DynamicObject>::namespaced_with(client, "shop", &resource)
                .get_opt(&name)
                .await
                .ok()
                .flatten()
        }
    };
    let ip = get(resource("GlobalIngressIP", "globalingressips"))
        .await
        .and_then(|o| {
            o.data["status"]["allocatedIP"]
                .as_str()
                .and_then(|s| s.parse().ok())
        });
    let valid = get(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport"),
        "serviceexports",
    ))
    .await
    .and_then(|o| {
        o.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Valid")
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap_or_default().to_string(),
                )
            })
    });
    (ip, valid)
}

#[test]
fn overlapping_clusters_reach_a_service_export_through_its_global_ingress_ip() {
    const PODS: &str = "10.1.0.0/16";
    const SERVICES: &str = "10.101.0.0/16";
    let kube = KubeSet::start_with(
        &[
            ClusterSpec::single_gateway("east", 1, 1).with_cidrs(PODS, SERVICES),
            ClusterSpec::single_gateway("west", 2, 1).with_cidrs(PODS, SERVICES),
        ],
        Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo")),
        true,
    );
    let limit = Duration::from_secs(60);
    kube.wait_active_connected("east", &["west"], limit);
    kube.wait_active_connected("west", &["east"], limit);
    let east_pod = kube.set.cluster("east").pod(0);
    let west_pod = kube.set.cluster("west").pod(0);
    assert_eq!(
        east_pod.ip, west_pod.ip,
        "the clusters' pods share an address"
    );

    let west_ip = west_pod.ip;
    kube.local("west", move |client| async move {
        create_namespace(&client, "shop").await;
        serve(client.clone(), "echo", west_ip, ECHO_PORT, true).await;
        // An export whose service does not exist.
        export(client, "missing").await;
    });
    let mut at = None;
    wait_until("a global ingress IP for shop/echo", limit, || {
        at = kube.local("west", |c| export_state(c, "echo".into())).0;
        at.is_some()
    });
    let at = at.unwrap();
    assert!(
        at.octets()[..2] == [242, 1],
        "{at} is not in west's global CIDR"
    );
    let (ip, valid) = kube.local("west", |c| export_state(c, "echo".into()));
    assert_eq!(ip, Some(at));
    assert_eq!(valid.map(|v| v.0).as_deref(), Some("True"));
    wait_until("the missing service's export to be refused", limit, || {
        let (ip, valid) = kube.local("west", |c| export_state(c, "missing".into()));
        ip.is_none()
            && valid.is_some_and(|(status, message)| {
                status == "False" && message.contains("does not exist")
            })
    });

    // East's pod gets a pool of its own (a GlobalEgressIP selecting it),
    // and west's server sees only that pool.
    let east_ip = east_pod.ip;
    kube.local("east", move |client| async move {
        create_namespace(&client, "shop").await;
        register_pod(client.clone(), "client", east_ip).await;
        let api: Api<DynamicObject> = Api::namespaced_with(
            client,
            "shop",
            &resource("GlobalEgressIP", "globalegressips"),
        );
        let request = serde_json::json!({
            "apiVersion": "submariner.io/v1", "kind": "GlobalEgressIP",
            "metadata": { "name": "client", "namespace": "shop" },
            "spec": { "numberOfIPs": 2, "podSelector": { "matchLabels": { "app": "client" } } },
        });
        api.patch(
            "client",
            &PatchParams::apply("strait-netns-tests").force(),
            &Patch::Apply(request),
        )
        .await
        .unwrap();
    });
    let mut pool = Vec::new();
    wait_until("east's GlobalEgressIP to get its addresses", limit, || {
        pool = kube.local("east", |client| async move {
            Api::<DynamicObject>::namespaced_with(
                client,
                "shop",
                &resource("GlobalEgressIP", "globalegressips"),
            )
            .get_opt("client")
            .await
            .ok()
            .flatten()
            .and_then(|o| o.data["status"]["allocatedIPs"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.as_str().map(String::from))
            .collect::<Vec<String>>()
        });
        pool.len() == 2
    });
    assert!(pool.iter().all(|ip| ip.starts_with("242.0.")), "{pool:?}");
    let range = format!("{}-{}", pool[0], pool[1]);
    west_pod.ns.nft(&format!(
        "table ip gn-seen {{ chain input {{ type filter hook input priority 0; policy accept;
                tcp dport {ECHO_PORT} ip saddr {range} counter comment \"from the pod's pool\"
                tcp dport {ECHO_PORT} ip saddr != {range} counter comment \"from elsewhere\"
            }}
            }}"
    ));

    // East's pod reaches west's through the ingress IP; the echo says
    // which pod answered, byte for byte.
    wait_until("east to reach west's export", limit, || {
        east_pod
            .tcp_request_at(west_pod, at, 1024, &["--timeout", "2"])
            .is_ok()
    });
    let report = east_pod
        .tcp_request_at(west_pod, at, 256 * 1024, &[])
        .unwrap_or_else(|e| panic!("a request through globalnet failed: {e}"));
    println!("GLOBALNET: {report}");
    let seen = probe_counts(&west_pod.ns, "gn-seen");
    assert!(seen["from the pod's pool"] > 0, "{seen:?}");
    assert_eq!(seen["from elsewhere"], 0, "{seen:?}");
}

/// Registers a running pod as the kubelet would: its labels (`app`) and
/// its address.
async fn register_pod(client: Client, app: &str, ip: Ipv4Addr) {
    let pods: Api<Pod> = Api::namespaced(client, "shop");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": app, "labels": { "app": app } },
        "spec": { "containers": [{ "name": "main", "image": "example.invalid/none" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = serde_json::json!({ "status": { "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] } });
    pods.patch_status(app, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}
