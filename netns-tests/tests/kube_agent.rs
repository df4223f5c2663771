//! Agents in Kubernetes mode: every simulated cluster has a real
//! kube-apiserver (in its LAN namespace) holding its Node objects, the
//! broker is a third one (on the WAN). Gateways find each other through
//! the broker's API, candidates elect the active gateway by a Lease, and
//! the dataplane outlives a broker outage.

use std::time::Duration;

use strait_netns_tests::cluster::{ClusterSpec, NodeSpec, Options};
use strait_netns_tests::kube::{
    create_namespace, install_crds, ApiServer, KubeSet, BROKER_NAMESPACE, STRAIT_NAMESPACE,
};
use strait_netns_tests::wait_until;

/// Short lease times: a crashed gateway is replaced within seconds.
const LEASE: &str =
    "  lease: { duration_ms: 3000, renew_deadline_ms: 2000, retry_period_ms: 500 }\n";

/// A kubeconfig of `server`'s admin whose context namespace is `namespace`.
fn kubeconfig_in(server: &ApiServer, namespace: &str) -> String {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&server.admin_kubeconfig()).expect("parsing a kubeconfig");
    let context = &mut config["contexts"][0]["context"];
    context["namespace"] = serde_yaml::Value::String(namespace.into());
    serde_yaml::to_string(&config).expect("writing a kubeconfig")
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

/// Builds the clusters and their API servers, installs the CRDs and
/// namespaces, and starts every agent with admin kubeconfigs.
fn start(specs: &[ClusterSpec]) -> KubeSet {
    start_with(specs, Options::new(), false)
}

/// [`start`] with `options`; with `globalnet`, cluster `k` gets the
/// global CIDR 242.(k-1).0.0/16 (as `strait join` writes it).
fn start_with(specs: &[ClusterSpec], options: Options, globalnet: bool) -> KubeSet {
    let mut kube = KubeSet::build(specs, options);
    kube.on_broker(|client| async move {
        install_crds(&client).await;
        create_namespace(&client, BROKER_NAMESPACE).await
    });
    let broker_kubeconfig = kube.set.root().join("broker.kubeconfig");
    std::fs::write(
        &broker_kubeconfig,
        kubeconfig_in(&kube.broker, BROKER_NAMESPACE),
    )
    .unwrap();
    for spec in specs {
        kube.local(&spec.id, |client| async move {
            install_crds(&client).await;
            create_namespace(&client, STRAIT_NAMESPACE).await;
        });
        let local_kubeconfig = kube.set.root().join(format!("{}.kubeconfig", spec.id));
        std::fs::write(
            &local_kubeconfig,
            kubeconfig_in(&kube.locals[&spec.id], STRAIT_NAMESPACE),
        )
        .unwrap();
        for node in &kube.set.cluster(&spec.id).nodes {
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
    }
    for spec in specs {
        kube.set.start_cluster(&spec.id);
    }
    for spec in specs {
        kube.set.wait_cluster_ready(&spec.id);
    }
    kube
}

#[test]
fn gateways_meet_through_the_broker_api_and_candidates_elect_one_active() {
    let mut kube = start(&[
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
    let mut kube = start(&[
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

#[test]
fn overlapping_clusters_reach_a_service_export_through_its_global_ingress_ip() {
    const PODS: &str = "10.1.0.0/16";
    const SERVICES: &str = "10.101.0.0/16";
    let kube = start_with(
        &[
            ClusterSpec::single_gateway("east", 1, 1).with_cidrs(PODS, SERVICES),
            ClusterSpec::single_gateway("west", 2, 1).with_cidrs(PODS, SERVICES),
        ],
        Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo")),
        true,
    );
    kube.check_globalnet_exports(Duration::from_secs(60));
}
