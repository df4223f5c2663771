//! The simulated-cluster harness itself, without agents: the topology
//! that the agent tests stand on (issue 5's shape: three nodes per cluster).

use std::path::Path;
use std::time::Duration;

use strait_netns_tests::cluster::{journal_state, teardown_persisted};
use strait_netns_tests::{
    require_root, wait_until, ClusterSet, ClusterSpec, NodeSpec, Options, Scratch,
};

fn three_nodes(id: &str, index: u8) -> ClusterSpec {
    ClusterSpec::new(
        id,
        index,
        vec![
            NodeSpec::gateway(&format!("{id}-gw"), 1),
            NodeSpec::worker(&format!("{id}-w1"), 2),
            NodeSpec::worker(&format!("{id}-w2"), 1),
        ],
    )
}

fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn topology_lans_pods_and_wan_without_agents() {
    require_root();
    let options = Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo"));
    let mut set = ClusterSet::empty(options);
    set.add_cluster(three_nodes("a", 1));
    set.add_cluster(three_nodes("b", 2));
    let names: Vec<String> = set
        .clusters()
        .iter()
        .flat_map(|c| c.nodes.iter())
        .flat_map(|n| {
            std::iter::once(n.ns.name().to_string())
                .chain(n.pods.iter().map(|p| p.ns.name().to_string()))
        })
        .collect();
    assert_eq!(names.len(), 2 * (3 + 4));

    let a = set.cluster("a");
    let b = set.cluster("b");
    let w1 = a.node("a-w1");
    assert_eq!(w1.lan_ip.to_string(), "172.16.1.11");
    assert_eq!(w1.pod_subnet, "10.1.2.0/24");
    assert_eq!(w1.pods[1].ip.to_string(), "10.1.2.3");
    assert_eq!(a.gateway().wan_ip.unwrap().to_string(), "198.51.100.11");
    assert_eq!(b.gateway().wan_ip.unwrap().to_string(), "198.51.100.21");
    assert!(w1.wan_ip.is_none());
    assert_eq!(w1.ok(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(), "1");

    // Pods reach their node, pods on other nodes, and TCP works among them.
    let gw_pod = a.pod(0);
    let w1_pod = a.pod(1);
    let w2_pod = a.pod(3);
    assert!(gw_pod.ping_once(a.gateway().pod_gateway, 5));
    assert!(gw_pod.ping(w1_pod), "pod on the gateway -> pod on w1");
    assert!(w2_pod.ping(gw_pod), "pod on w2 -> pod on the gateway");
    let said = w2_pod
        .tcp_request(w1_pod, 100_000)
        .expect("TCP within a cluster");
    assert!(said.starts_with("ok bytes=100000"), "{said}");
    // Gateways reach each other over the WAN; workers have no WAN.
    assert!(a
        .gateway()
        .ns
        .ping_all(&b.gateway().wan_ip.unwrap().to_string(), 1, 5));
    // Without agents, no cross-cluster path.
    assert!(!gw_pod.ping_once(b.pod(0).ip, 1));
    drop(set);
    for name in &names {
        assert!(!namespace_exists(name), "{name} left behind");
    }
}

#[test]
fn a_persisted_set_is_torn_down_from_its_journal() {
    require_root();
    let scratch = Scratch::new("persist");
    let journal = scratch.path("state");
    let mut options = Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo"));
    options.root = Some(scratch.path("root"));
    options.journal = Some(journal.clone());
    options.detach = true;
    let mut set = ClusterSet::empty(options);
    set.add_cluster(ClusterSpec::single_gateway("a", 1, 1));
    let persisted = set.persist();
    let state = journal_state(&journal);
    assert!(state.complete);
    assert_eq!(state.processes.len(), 1, "{state:?}");
    assert_eq!(state.namespaces.len(), persisted.namespaces.len());
    for name in &persisted.namespaces {
        assert!(namespace_exists(name), "{name} was not kept");
    }
    let report = teardown_persisted(&journal);
    assert_eq!(report.stopped.len(), 1, "{report:?}");
    assert!(report.killed.is_empty(), "{report:?}");
    for name in &persisted.namespaces {
        assert!(!namespace_exists(name), "{name} left behind");
    }
    wait_until("the echo server to be gone", Duration::from_secs(5), || {
        journal_state(&journal).processes.is_empty()
    });
    assert!(!journal.exists());
}
