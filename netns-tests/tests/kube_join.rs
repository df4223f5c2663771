//! `strait deploy-broker` and `strait join` against real API servers: a
//! broker and two clusters (etcd + kube-apiserver each, RBAC on). Runs the
//! `strait` binary as a user would, with the harness's kubeconfig files.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::Client;
use strait_netns_tests::kube::{ApiServer, ApiServerOptions};
use strait_netns_tests::{strait_bin, Scratch};

const BROKER_NS: &str = "submariner-k8s-broker";
/// Each cluster's networks: pods from its nodes, services from its API
/// server's `--service-cluster-ip-range` (the `kubernetes` ServiceCIDR).
const EAST_NODES: [(&str, &str); 2] = [("east-1", "10.1.0.0/24"), ("east-2", "10.1.1.0/24")];
const EAST_SERVICES: &str = "10.11.0.0/24";
const WEST_NODES: [(&str, &str); 1] = [("west-1", "10.2.0.0/24")];
const WEST_SERVICES: &str = "10.12.0.0/24";

fn start(tag: &str, service_cidr: &str) -> ApiServer {
    let mut opts = ApiServerOptions::default().tag(tag);
    opts.service_cidr = service_cidr.into();
    ApiServer::start_with(opts)
}

/// The broker and two clusters, started at once.
fn start_three() -> (ApiServer, ApiServer, ApiServer) {
    std::thread::scope(|s| {
        let broker = s.spawn(|| start("broker", "10.0.0.0/24"));
        let east = s.spawn(|| start("east", EAST_SERVICES));
        let west = s.spawn(|| start("west", WEST_SERVICES));
        (
            broker.join().expect("starting the broker"),
            east.join().expect("starting east"),
            west.join().expect("starting west"),
        )
    })
}

fn strait(args: &[&str]) -> Output {
    Command::new(strait_bin())
        .args(args)
        .output()
        .expect("running strait")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn succeeds(args: &[&str]) -> String {
    let output = strait(args);
    assert!(
        output.status.success(),
        "strait {args:?} failed: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must be refused: returns its one-line error.
fn refused(args: &[&str]) -> String {
    let output = strait(args);
    assert!(
        !output.status.success(),
        "strait {args:?} succeeded: {}",
        text(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {}", text(&output));
    stderr
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn node(name: &str, pod_cidr: &str) -> Node {
    serde_yaml::from_str(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{ name: {name} }}\nspec: {{ podCIDR: {pod_cidr}, podCIDRs: [{pod_cidr}] }}\n"
    ))
    .unwrap()
}

async fn create_nodes(client: &Client, nodes: &[(&str, &str)]) {
    let api = Api::<Node>::all(client.clone());
    for (name, cidr) in nodes {
        api.create(&PostParams::default(), &node(name, cidr))
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
    }
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "submariner.io".into(),
        version: "v1".into(),
        api_version: "submariner.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn endpoints(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        BROKER_NS,
        &resource("Endpoint", "endpoints"),
    )
}

fn clusters(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), BROKER_NS, &resource("Cluster", "clusters"))
}

fn endpoint(name: &str, cluster_id: &str, nat_enabled: &str) -> DynamicObject {
    serde_yaml::from_str(&format!(
        "apiVersion: submariner.io/v1
kind: Endpoint
metadata: {{ name: {name}, namespace: {BROKER_NS} }}
spec:
  cluster_id: {cluster_id}
  cable_name: c
  hostname: gw
  private_ip: 192.0.2.1
  subnets: [10.9.0.0/16]
  nat_enabled: {nat_enabled}
  backend: wireguard
"
    ))
    .unwrap()
}

/// Asserts that the API server refused the request as forbidden (403).
fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    let (code, message) = refusal(result, what);
    assert_eq!(code, 403, "{what}: {message}");
}

/// The HTTP status of a request the API server refused.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        other => panic!("{what}: expected a refusal by the API server, got {other:?}"),
    }
}

/// A client of the broker as a joined cluster's agents are: from the
/// kubeconfig `join` put into the cluster's `strait-broker` Secret.
async fn cluster_account(cluster: &Client) -> (Client, Secret) {
    let secret = Api::<Secret>::namespaced(cluster.clone(), "strait")
        .get("strait-broker")
        .await
        .expect("the strait-broker Secret");
    let yaml = String::from_utf8(secret.data.as_ref().unwrap()["kubeconfig"].0.clone()).unwrap();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("a kubeconfig");
    let context = kubeconfig.contexts[0].context.clone().unwrap();
    assert_eq!(context.namespace.as_deref(), Some(BROKER_NS));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a config from the broker kubeconfig");
    (Client::try_from(config).unwrap(), secret)
}

/// The broker-info file as Submariner reads it: URL-safe base64 of JSON.
fn broker_info_json(file: &Path) -> serde_yaml::Value {
    let text = std::fs::read_to_string(file).unwrap();
    let json = URL_SAFE.decode(text.trim()).expect("URL-safe base64");
    serde_yaml::from_slice(&json).expect("JSON")
}

fn data(secret: &serde_yaml::Value, key: &str) -> Vec<u8> {
    let value = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no data.{key} in {secret:?}"));
    STANDARD.decode(value).expect("base64 data")
}

/// What of Strait exists in a cluster and on the broker, for "nothing was
/// created" checks.
async fn traces(cluster: &Client, broker: &Client, cluster_id: &str) -> Vec<String> {
    let mut found = Vec::new();
    if Api::<Namespace>::all(cluster.clone())
        .get_opt("strait")
        .await
        .unwrap()
        .is_some()
    {
        found.push("namespace strait".to_string());
    }
    let crds = Api::<CustomResourceDefinition>::all(cluster.clone());
    if crds
        .get_opt("clusters.submariner.io")
        .await
        .unwrap()
        .is_some()
    {
        found.push("CRD clusters.submariner.io".to_string());
    }
    for n in Api::<Node>::all(cluster.clone())
        .list(&Default::default())
        .await
        .unwrap()
    {
        if n.metadata
            .labels
            .unwrap_or_default()
            .contains_key("submariner.io/gateway")
        {
            found.push(format!("gateway label on {}", n.metadata.name.unwrap()));
        }
    }
    let accounts = Api::<ServiceAccount>::namespaced(broker.clone(), BROKER_NS);
    let account = format!("strait-cluster-{cluster_id}");
    if accounts.get_opt(&account).await.unwrap().is_some() {
        found.push(format!("broker account {account}"));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_broker_then_two_clusters_join_each_writing_only_its_own_objects() {
    let (broker, east, west) = start_three();
    let scratch = Scratch::new("kube-join");
    let info_file = scratch.path("broker-info.subm");
    let info = path(&info_file);
    let (broker_admin, east_admin, west_admin) = (broker.client(), east.client(), west.client());
    let broker_kubeconfig = broker.kubeconfig_path();
    let east_kubeconfig = east.kubeconfig_path();
    let west_kubeconfig = west.kubeconfig_path();

    // deploy-broker, twice: the second run changes nothing, PSK included.
    let out = succeeds(&[
        "deploy-broker",
        "--kubeconfig",
        path(&broker_kubeconfig),
        "--output",
        info,
    ]);
    for line in [
        "Namespace submariner-k8s-broker: created",
        "CustomResourceDefinition clusters.submariner.io: created",
        "CustomResourceDefinition serviceimports.multicluster.x-k8s.io: created",
        "ServiceAccount submariner-k8s-broker/submariner-k8s-broker-admin: created",
        "ValidatingAdmissionPolicy strait-broker-ownership-submariner-k8s-broker: created",
        "ConfigMap submariner-k8s-broker/submariner-globalnet-info: created",
    ] {
        assert!(out.contains(line), "{line:?} missing in\n{out}");
    }
    let first = broker_info_json(&info_file);
    let again = succeeds(&[
        "deploy-broker",
        "--kubeconfig",
        path(&broker_kubeconfig),
        "--output",
        info,
    ]);
    assert!(
        !again.contains(": created") && !again.contains(": updated"),
        "a second deploy-broker changed things:\n{again}"
    );
    let info_json = broker_info_json(&info_file);
    assert_eq!(info_json["brokerURL"].as_str(), Some(broker.url().as_str()));
    let token_secret = &info_json["ClientToken"];
    assert_eq!(data(token_secret, "namespace"), BROKER_NS.as_bytes());
    assert!(!data(token_secret, "token").is_empty());
    assert_eq!(
        String::from_utf8(data(token_secret, "ca.crt")).unwrap(),
        broker.ca_pem()
    );
    let psk = data(&info_json["IPSecPSK"], "psk");
    // 48 random bytes, in base64: text, for readers that take it as such.
    assert_eq!(STANDARD.decode(&psk).expect("a base64 PSK").len(), 48);
    assert_eq!(
        psk,
        data(&first["IPSecPSK"], "psk"),
        "the PSK changed on a re-run"
    );
    assert_eq!(info_json["ServiceDiscovery"].as_bool(), Some(true));
    let components: Vec<&str> = info_json["Components"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(components, ["service-discovery", "connectivity"]);
    assert!(info_json["CustomDomains"].is_null());
    let globalnet = Api::<ConfigMap>::namespaced(broker_admin.clone(), BROKER_NS)
        .get("submariner-globalnet-info")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(globalnet["globalnetEnabled"], "false");
    assert_eq!(globalnet["clusterinfo"], "[]");

    create_nodes(&east_admin, &EAST_NODES).await;
    create_nodes(&west_admin, &WEST_NODES).await;

    // East joins, with its networks discovered.
    let out = succeeds(&[
        "join",
        info,
        "--clusterid",
        "east",
        "--kubeconfig",
        path(&east_kubeconfig),
    ]);
    for line in [
        "discovered cluster CIDRs 10.1.0.0/23",
        &format!("discovered service CIDRs {EAST_SERVICES}"),
        "broker: ServiceAccount submariner-k8s-broker/strait-cluster-east: created",
        "broker: Cluster submariner-k8s-broker/east: created",
        "cluster: Namespace strait: created",
        "cluster: DaemonSet strait/strait-agent: created",
        "cluster: Secret strait/strait-broker: created",
        "ServiceMonitor skipped",
        "gateway node east-1: labelled submariner.io/gateway=true",
    ] {
        assert!(out.contains(line), "{line:?} missing in\n{out}");
    }
    let config = Api::<ConfigMap>::namespaced(east_admin.clone(), "strait")
        .get("strait-agent")
        .await
        .unwrap();
    let agent: serde_yaml::Value =
        serde_yaml::from_str(&config.data.unwrap()["agent.yaml"]).unwrap();
    let expected: serde_yaml::Value = serde_yaml::from_str(&format!(
        "cluster_id: east
broker: kube:/etc/strait/broker/kubeconfig
kubernetes: {{ namespace: strait }}
cluster: {{ pod_cidrs: [10.1.0.0/23], service_cidrs: [{EAST_SERVICES}] }}
cable: {{ psk_file: /etc/strait/broker/psk, private_key_file: /var/lib/strait/private.key }}
"
    ))
    .unwrap();
    assert_eq!(agent, expected);
    let daemon_set = Api::<DaemonSet>::namespaced(east_admin.clone(), "strait")
        .get("strait-agent")
        .await
        .unwrap();
    let pod = daemon_set.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("strait-agent"));

    // Again: nothing changes, the token included.
    let again = succeeds(&[
        "join",
        info,
        "--clusterid",
        "east",
        "--kubeconfig",
        path(&east_kubeconfig),
    ]);
    assert!(
        !again.contains(": created") && !again.contains(": updated"),
        "a second join changed things:\n{again}"
    );
    assert!(
        again.contains("gateway node east-1: already labelled"),
        "{again}"
    );

    let (east_account, east_secret) = cluster_account(&east_admin).await;
    assert_eq!(east_secret.data.as_ref().unwrap()["psk"].0, psk);

    // Refused before anything is created, on west (not joined yet).
    let west_traces_before = traces(&west_admin, &broker_admin, "west").await;
    assert!(west_traces_before.is_empty(), "{west_traces_before:?}");
    let garbage = scratch.path("garbage.subm");
    std::fs::write(&garbage, "this is not a broker-info file\n").unwrap();
    let west_kc = path(&west_kubeconfig);
    let message = refused(&[
        "join",
        path(&garbage),
        "--clusterid",
        "west",
        "--kubeconfig",
        west_kc,
    ]);
    assert!(
        message.contains("broker-info file") && message.contains("base64"),
        "{message}"
    );
    let missing = scratch.path("absent.subm");
    let message = refused(&[
        "join",
        path(&missing),
        "--clusterid",
        "west",
        "--kubeconfig",
        west_kc,
    ]);
    assert!(
        message.contains("reading the broker-info file"),
        "{message}"
    );
    let message = refused(&[
        "join",
        info,
        "--clusterid",
        "West_1",
        "--kubeconfig",
        west_kc,
    ]);
    assert!(message.contains("not a DNS label"), "{message}");
    let message = refused(&["join", info, "--clusterid", "east", "--kubeconfig", west_kc]);
    assert!(
        message.contains("\"east\" is already used by another cluster"),
        "{message}"
    );
    let message = refused(&[
        "join",
        info,
        "--clusterid",
        "west",
        "--kubeconfig",
        west_kc,
        "--clustercidr",
        "10.1.0.0/16",
    ]);
    assert!(
        message.contains("10.1.0.0/16 overlaps 10.1.0.0/23 of cluster east"),
        "{message}"
    );
    let message = refused(&[
        "join",
        info,
        "--clusterid",
        "west",
        "--kubeconfig",
        west_kc,
        "--servicecidr",
        EAST_SERVICES,
    ]);
    assert!(message.contains("of cluster east"), "{message}");
    assert_eq!(
        traces(&west_admin, &broker_admin, "west").await,
        Vec::<String>::new()
    );

    // West joins.
    succeeds(&["join", info, "--clusterid", "west", "--kubeconfig", west_kc]);
    let (west_account, _) = cluster_account(&west_admin).await;

    // Each cluster writes its own objects...
    let own = PostParams::default();
    endpoints(&east_account)
        .create(&own, &endpoint("east-c", "east", "false"))
        .await
        .expect("east creates its endpoint");
    endpoints(&west_account)
        .create(&own, &endpoint("west-c", "west", "false"))
        .await
        .expect("west creates its endpoint");
    let mut east_cluster = clusters(&east_account)
        .get("east")
        .await
        .expect("east reads its Cluster");
    east_cluster.data["spec"]["color_codes"] = serde_yaml::from_str("[blue]").unwrap();
    clusters(&east_account)
        .replace("east", &own, &east_cluster)
        .await
        .expect("east updates its Cluster");

    // ...and none of the other's: the admission policy (403 Forbidden),
    // once the API server has loaded it (a dry run creates nothing).
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoints(&east_account)
        .create(&dry_run, &endpoint("west-probe", "west", "false"))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the admission policy never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let foreign = [
        (
            "an endpoint named for west",
            endpoint("west-d", "west", "false"),
        ),
        (
            "its own name claiming west",
            endpoint("east-d", "west", "false"),
        ),
        (
            "west's name claiming east",
            endpoint("west-e", "east", "false"),
        ),
    ];
    for (what, object) in &foreign {
        let (code, message) = refusal(endpoints(&east_account).create(&own, object).await, what);
        assert_eq!(code, 403, "{what}: {message}");
        assert!(
            message.contains("may only write its own"),
            "{what}: {message}"
        );
    }
    let mut west_endpoint = endpoints(&east_account)
        .get("west-c")
        .await
        .expect("east reads west's endpoint");
    west_endpoint.data["spec"]["hostname"] = "hijacked".into();
    assert_forbidden(
        endpoints(&east_account)
            .replace("west-c", &own, &west_endpoint)
            .await,
        "updating west's endpoint",
    );
    assert_forbidden(
        endpoints(&east_account)
            .delete("west-c", &DeleteParams::default())
            .await,
        "deleting west's endpoint",
    );
    assert_forbidden(
        clusters(&east_account)
            .delete("west", &DeleteParams::default())
            .await,
        "deleting west's Cluster",
    );
    // A cluster id that extends another's ("east-2" starts with "east-")
    // stays the other cluster's.
    endpoints(&broker_admin)
        .create(&own, &endpoint("east-2", "east-2", "false"))
        .await
        .expect("the admin writes anything");
    assert_forbidden(
        endpoints(&east_account)
            .delete("east-2", &DeleteParams::default())
            .await,
        "deleting an endpoint of cluster east-2",
    );
    // RBAC: no other kinds, no Secrets.
    let gateways = Api::<DynamicObject>::namespaced_with(
        east_account.clone(),
        BROKER_NS,
        &resource("Gateway", "gateways"),
    );
    let gateway: DynamicObject = serde_yaml::from_str(&format!(
        "apiVersion: submariner.io/v1\nkind: Gateway\nmetadata: {{ name: east-gw, namespace: {BROKER_NS} }}\nstatus: {{ haStatus: active }}\n"
    ))
    .unwrap();
    assert_forbidden(gateways.create(&own, &gateway).await, "creating a Gateway");
    gateways
        .list(&Default::default())
        .await
        .expect("a cluster reads gateways");
    assert_forbidden(
        Api::<Secret>::namespaced(east_account.clone(), BROKER_NS)
            .list(&Default::default())
            .await,
        "listing the broker's Secrets",
    );
    // West's own still there, unchanged.
    let west_endpoint = endpoints(&west_account).get("west-c").await.unwrap();
    assert_eq!(west_endpoint.data["spec"]["hostname"], "gw");

    // The CRD schema refuses a wrong type (422 Unprocessable Entity).
    let (code, message) = refusal(
        endpoints(&broker_admin)
            .create(&own, &endpoint("east-bad", "east", "\"yes\""))
            .await,
        "nat_enabled: \"yes\"",
    );
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("nat_enabled"), "{message}");

    // Joining again keeps what others wrote into the Cluster object.
    let again = succeeds(&[
        "join",
        info,
        "--clusterid",
        "east",
        "--kubeconfig",
        path(&east_kubeconfig),
    ]);
    assert!(
        again.contains("broker: Cluster submariner-k8s-broker/east: unchanged"),
        "{again}"
    );
    let east_cluster = clusters(&broker_admin).get("east").await.unwrap();
    assert_eq!(east_cluster.data["spec"]["color_codes"][0], "blue");
}

/// A broker-info file as `subctl deploy-broker` writes it, with the access
/// of `info`: Go's field names, Secrets without apiVersion and kind, a
/// broker URL without scheme.
fn subctl_file(info: &serde_yaml::Value) -> String {
    let token = &info["ClientToken"]["data"];
    let field = |v: &serde_yaml::Value, key: &str| v[key].as_str().unwrap().to_string();
    let json = format!(
        r#"{{"brokerURL":"{url}","ClientToken":{{"metadata":{{"name":"submariner-k8s-broker-admin-token-x","creationTimestamp":null}},"data":{{"ca.crt":"{ca}","namespace":"{ns}","token":"{token}"}},"type":"kubernetes.io/service-account-token"}},"IPSecPSK":{{"metadata":{{"name":"submariner-ipsec-psk","creationTimestamp":null}},"data":{{"psk":"{psk}"}}}},"ServiceDiscovery":true,"Components":["service-discovery","connectivity","globalnet"],"CustomDomains":null}}"#,
        url = field(info, "brokerURL").trim_start_matches("https://"),
        ca = field(token, "ca.crt"),
        ns = field(token, "namespace"),
        token = field(token, "token"),
        psk = field(&info["IPSecPSK"]["data"], "psk"),
    );
    URL_SAFE.encode(json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_globalnet_clusters_with_the_same_cidrs_join_also_from_a_subctl_file() {
    let (broker, a, b) = std::thread::scope(|s| {
        let broker = s.spawn(|| start("gbroker", "10.0.0.0/24"));
        let a = s.spawn(|| start("ga", "10.0.0.0/24"));
        let b = s.spawn(|| start("gb", "10.0.0.0/24"));
        (broker.join().unwrap(), a.join().unwrap(), b.join().unwrap())
    });
    let scratch = Scratch::new("kube-globalnet");
    let info_file = scratch.path("broker-info.subm");
    let broker_kubeconfig = broker.kubeconfig_path();
    succeeds(&[
        "deploy-broker",
        "--kubeconfig",
        path(&broker_kubeconfig),
        "--globalnet",
        "--globalnet-cidr-range",
        "242.0.0.0/16",
        "--globalnet-cluster-size",
        "256",
        "--output",
        path(&info_file),
    ]);
    let globalnet = Api::<ConfigMap>::namespaced(broker.client(), BROKER_NS)
        .get("submariner-globalnet-info")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(globalnet["globalnetEnabled"], "true");
    assert_eq!(globalnet["globalnetCidrRange"], "242.0.0.0/16");
    assert_eq!(globalnet["globalnetClusterSize"], "256");
    let info = broker_info_json(&info_file);
    assert!(info["Components"]
        .as_sequence()
        .unwrap()
        .contains(&"globalnet".into()));
    // Other globalnet settings on a re-run: refused, the ConfigMap kept.
    let message = refused(&[
        "deploy-broker",
        "--kubeconfig",
        path(&broker_kubeconfig),
        "--output",
        path(&scratch.path("other.subm")),
    ]);
    assert!(message.contains("other globalnet settings"), "{message}");

    for cluster in [&a, &b] {
        create_nodes(&cluster.client(), &[("node-1", "10.1.0.0/24")]).await;
    }
    // Both join at the same moment, b from a subctl-shaped file: each gets
    // its own slice of the global range.
    let subctl = scratch.path("subctl.subm");
    std::fs::write(&subctl, subctl_file(&info)).unwrap();
    let (a_kubeconfig, b_kubeconfig) = (a.kubeconfig_path(), b.kubeconfig_path());
    let join = |file: &Path, id: &str, kubeconfig: &Path| {
        succeeds(&[
            "join",
            path(file),
            "--clusterid",
            id,
            "--kubeconfig",
            path(kubeconfig),
        ])
    };
    let (out_a, out_b) = std::thread::scope(|s| {
        let a = s.spawn(|| join(&info_file, "a", &a_kubeconfig));
        let b = s.spawn(|| join(&subctl, "b", &b_kubeconfig));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        out_a.contains("discovered service CIDRs 10.0.0.0/24"),
        "{out_a}"
    );
    assert!(
        out_b.contains("globalnet is on: overlapping CIDRs are allowed"),
        "{out_b}"
    );
    let claimed = Api::<ConfigMap>::namespaced(broker.client(), BROKER_NS)
        .get("submariner-globalnet-info")
        .await
        .unwrap()
        .data
        .unwrap();
    let claims: Vec<serde_json::Value> = serde_json::from_str(&claimed["clusterinfo"]).unwrap();
    let slice_of = |id: &str| {
        claims
            .iter()
            .find(|c| c["cluster_id"] == id)
            .unwrap_or_else(|| panic!("no claim of {id}: {claims:?}"))["global_cidr"][0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (slice_a, slice_b) = (slice_of("a"), slice_of("b"));
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_ne!(slice_a, slice_b, "two clusters got one slice");
    for slice in [&slice_a, &slice_b] {
        assert!(
            slice.starts_with("242.0.") && slice.ends_with("/24"),
            "{slice}"
        );
    }
    // Each agent is configured with its slice; joining again keeps it.
    for (cluster, slice) in [(&a, &slice_a), (&b, &slice_b)] {
        let config = Api::<ConfigMap>::namespaced(cluster.client(), "strait")
            .get("strait-agent")
            .await
            .unwrap()
            .data
            .unwrap()["agent.yaml"]
            .clone();
        assert!(
            config.contains(&format!("global_cidr: {slice}")),
            "{config}"
        );
    }
    let again = join(&info_file, "a", &a_kubeconfig);
    assert!(again.contains(&format!("global CIDR {slice_a}")), "{again}");
    // A cluster whose own addresses lie in the global range is refused,
    // and nothing of it is created.
    let message = refused(&[
        "join",
        path(&info_file),
        "--clusterid",
        "c",
        "--kubeconfig",
        path(&a_kubeconfig),
        "--clustercidr",
        "242.0.200.0/24",
    ]);
    assert!(
        message.contains("overlaps this cluster's 242.0.200.0/24"),
        "{message}"
    );
    let account = Api::<ServiceAccount>::namespaced(broker.client(), BROKER_NS)
        .get_opt("strait-cluster-c")
        .await
        .unwrap();
    assert!(account.is_none(), "a refused join created its account");
    let (b_account, secret) = cluster_account(&b.client()).await;
    assert_eq!(
        secret.data.unwrap()["psk"].0,
        data(&info["IPSecPSK"], "psk")
    );
    let b_cluster = clusters(&b_account)
        .get("b")
        .await
        .expect("b reads its Cluster");
    assert_eq!(b_cluster.data["spec"]["cluster_cidr"][0], "10.1.0.0/24");
    let a_cluster = clusters(&b_account)
        .get("a")
        .await
        .expect("b reads a's Cluster");
    assert_eq!(a_cluster.data["spec"]["cluster_cidr"][0], "10.1.0.0/24");
}
