//! Pod-to-pod throughput across two simulated clusters, with Strait and
//! without it, interleaved in one run (as root; `netns-tests/bench-pods.sh`
//! runs it and writes the result into BENCHMARKS.md):
//!
//!   bench-pods [--seconds N] [--rounds R] [--root DIR] [--journal FILE]
//!
//! `--root` puts the sets' files (configs, broker, logs) under DIR;
//! `--journal` has the harness list every namespace and process it makes
//! in FILE, so that a script that interrupts this one can remove them.
//!
//! Two identical cluster sets are built with the netns harness (clusters
//! `a` and `b`, three nodes each: `<id>-gw` on the LAN and the WAN,
//! `<id>-w1`, `<id>-w2` on the LAN only, a pod on every node):
//!
//! - **strait**: `strait agent` on every node (WireGuard between the
//!   gateways, VXLAN `strait-vx` from the other nodes to their gateway,
//!   the `inet strait` nft table);
//! - **bare**: no agent; the same paths by hand, unencrypted: each gateway
//!   routes the other cluster's pod CIDR to the other gateway's WAN
//!   address, every node has a plain VXLAN `vx0` (VNI 1, port 4789,
//!   240.b.c.d/8, MTU 1450) whose default FDB entry points at its gateway,
//!   and non-gateway nodes route the remote pod CIDR through it.
//!
//! Paths (pod to pod, a → b): non-gateway → non-gateway (a-w1 → b-w1),
//! gateway → gateway (a-gw → b-gw), gateway → non-gateway (a-gw → b-w1).
//! Each round runs every (path, variant) once, `iperf3 -c -t N`, single
//! TCP stream, receiver figure; the order rotates each round. Prints
//! tab-separated lines `run ROUND PATH VARIANT MBITS RETRANSMITS LOAD` (the
//! host's 1-minute load average after the run), then
//! `median PATH VARIANT MBITS`.

use std::process::exit;
use std::time::Duration;

use strait_netns_tests::bench::{iperf, iperf_server, load_average, median, BenchArgs};
use strait_netns_tests::{wait_until, ClusterSet, ClusterSpec, Options, Pod, Process};

fn fail(message: &str) -> ! {
    eprintln!("bench-pods: {message}");
    exit(1)
}

/// The path a → b of each benchmark: (name, source node, target node).
const PATHS: [(&str, &str, &str); 3] = [
    ("non-gateway → non-gateway", "a-w1", "b-w1"),
    ("gateway → gateway", "a-gw", "b-gw"),
    ("gateway → non-gateway", "a-gw", "b-w1"),
];

fn pod<'s>(set: &'s ClusterSet, node: &str) -> &'s Pod {
    let cluster = &node[..1];
    &set.cluster(cluster).node(node).pods[0]
}

/// The bare variant's routes and VXLAN, by hand.
fn wire_bare(set: &ClusterSet) {
    for (id, other) in [("a", "b"), ("b", "a")] {
        let cluster = set.cluster(id);
        let remote = set.cluster(other);
        let gw = cluster.gateway();
        let remote_wan = remote.gateway().wan_ip.expect("a gateway's WAN address");
        gw.ok(&[
            "ip",
            "route",
            "add",
            &remote.spec.pod_cidr,
            "via",
            &remote_wan.to_string(),
            "dev",
            "wan0",
        ]);
        let [_, b, c, d] = gw.lan_ip.octets();
        let gw_overlay = format!("240.{b}.{c}.{d}");
        for node in &cluster.nodes {
            let [_, b, c, d] = node.lan_ip.octets();
            node.ok(&[
                "ip",
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &node.lan_ip.to_string(),
                "dev",
                "lan0",
                "dstport",
                "4789",
            ]);
            node.ok(&[
                "ip",
                "addr",
                "add",
                &format!("240.{b}.{c}.{d}/8"),
                "dev",
                "vx0",
            ]);
            node.ok(&["ip", "link", "set", "vx0", "mtu", "1450", "up"]);
            node.ok(&["sysctl", "-qw", "net.ipv4.conf.vx0.rp_filter=2"]);
            if node.index == gw.index {
                continue;
            }
            node.ok(&[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                "vx0",
                "dst",
                &gw.lan_ip.to_string(),
            ]);
            node.ok(&[
                "ip",
                "route",
                "add",
                &remote.spec.pod_cidr,
                "via",
                &gw_overlay,
                "dev",
                "vx0",
                "onlink",
                "src",
                &node.pod_gateway.to_string(),
            ]);
        }
    }
}

/// `iperf3 -s` in every target pod of a set.
fn start_servers(set: &ClusterSet, tag: &str) -> Vec<Process> {
    ["b-gw", "b-w1"]
        .into_iter()
        .map(|node| {
            let log = set.root().join(format!("iperf3-{tag}-{node}.log"));
            iperf_server(pod(set, node), &log)
        })
        .collect()
}

fn main() {
    let BenchArgs {
        seconds,
        rounds,
        root,
        journal,
    } = BenchArgs::parse("bench-pods");
    let options = |tag: &str| {
        let mut options = Options::new();
        options.root = root.as_ref().map(|r| r.join(tag));
        options.journal = journal.clone();
        options
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        fail("run as root: it creates network namespaces");
    }
    let specs = [
        ClusterSpec::three_nodes("a", 1),
        ClusterSpec::three_nodes("b", 2),
    ];

    eprintln!("bench-pods: building the strait set (agents on every node)");
    let strait = ClusterSet::build(&specs, options("strait"));
    strait.wait_connected(Duration::from_secs(30));
    eprintln!("bench-pods: building the bare set (plain routing and VXLAN)");
    let mut bare = ClusterSet::empty(options("bare"));
    for spec in &specs {
        bare.add_cluster(spec.clone());
    }
    wire_bare(&bare);
    let variants: [(&str, &ClusterSet); 2] = [("bare", &bare), ("strait", &strait)];
    for (tag, set) in variants {
        for (name, from, to) in PATHS {
            let (p, q) = (pod(set, from), pod(set, to));
            wait_until(
                &format!("{name} ({tag}): {} to reach {}", p.tag(), q.tag()),
                Duration::from_secs(30),
                || p.ping_once(q.ip, 1) && q.ping_once(p.ip, 1),
            );
        }
    }
    let _servers: Vec<Process> = variants
        .iter()
        .flat_map(|(tag, set)| start_servers(set, tag))
        .collect();

    let mut runs: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for path in 0..PATHS.len() {
        for variant in 0..variants.len() {
            runs.push((path, variant, Vec::new()));
        }
    }
    for round in 0..rounds as usize {
        // Rotate the order of the (path, variant) runs each round.
        let n = runs.len();
        for i in 0..n {
            let at = (i + round) % n;
            let (path, variant, _) = runs[at];
            let (name, from, to) = PATHS[path];
            let (tag, set) = variants[variant];
            let (mbits, retransmits) = iperf(pod(set, from), pod(set, to).ip, seconds)
                .unwrap_or_else(|e| fail(&format!("{name} ({tag}), round {}: {e}", round + 1)));
            println!(
                "run\t{}\t{name}\t{tag}\t{mbits:.0}\t{retransmits}\t{}",
                round + 1,
                load_average()
            );
            runs[at].2.push(mbits);
        }
    }
    for (path, variant, figures) in &mut runs {
        println!(
            "median\t{}\t{}\t{:.0}",
            PATHS[*path].0,
            variants[*variant].0,
            median(figures)
        );
    }
}
