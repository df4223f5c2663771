//! Globalnet in `dir` mode: clusters with identical pod and service CIDRs
//! (pods with the same address on every side) reach each other's exported
//! services through global addresses. Each gateway claims a slice of
//! 242.0.0.0/8 in the broker, SNATs its pods' traffic to remote clusters to
//! its egress pool and DNATs its exports' ingress IPs to their targets, all
//! in the `inet strait` table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use strait_netns_tests::cluster::{parse_metrics, str_at, Node, TUNNEL_IFNAME};
use strait_netns_tests::globalnet::{
    egress_ips, export, global_cidr, ingress_ip, probe_counts, refusal, state, unexport,
    wait_ingress_ip, write_export,
};
use strait_netns_tests::{
    require_root, wait_until, ClusterSet, ClusterSpec, NodeSpec, Options, Pod,
};

/// Every cluster's CIDRs: they all overlap.
const POD_CIDR: &str = "10.1.0.0/16";
const SERVICE_CIDR: &str = "10.101.0.0/16";
const ECHO_PORT: u16 = strait_netns_tests::cluster::ECHO_PORT;
const TCP_BYTES: usize = 256 * 1024;
/// The exports of each cluster's echo servers: the gateway node's pod's
/// and the worker node's pod's.
const EXPORT: &str = "echo";
const WORKER_EXPORT: &str = "echo-worker";

fn options(globalnet: &str) -> Options {
    let mut options = Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo"));
    options.globalnet = Some(globalnet.to_string());
    options
}

/// A gateway and a worker node, a pod on each.
fn overlapping(id: &str, index: u8) -> ClusterSpec {
    ClusterSpec::gateway_and_worker(id, index).with_cidrs(POD_CIDR, SERVICE_CIDR)
}

/// Clusters `ids`, all with the same CIDRs, started at the same moment
/// (their gateways race for slices), each exporting its pods' echo
/// servers. Returns the set and each cluster's ingress IPs by export.
fn clusters(ids: &[&str]) -> (ClusterSet, BTreeMap<(String, &'static str), Ipv4Addr>) {
    require_root();
    let specs: Vec<ClusterSpec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| overlapping(id, i as u8 + 1))
        .collect();
    let set = ClusterSet::build(&specs, options(""));
    let first = set.cluster(ids[0]);
    for id in ids {
        for n in 0..2 {
            assert_eq!(
                set.cluster(id).pod(n).ip,
                first.pod(n).ip,
                "the pods share their addresses"
            );
        }
    }
    let mut ingress = BTreeMap::new();
    for id in ids {
        let cluster = set.cluster(id);
        let gw = cluster.gateway();
        for (n, name) in [EXPORT, WORKER_EXPORT].into_iter().enumerate() {
            export(gw, name, cluster.pod(n).ip, ECHO_PORT);
            let ip = wait_ingress_ip(gw, name, Duration::from_secs(10));
            ingress.insert((id.to_string(), name), ip);
        }
    }
    (set, ingress)
}

/// Waits until `from` reaches `to`'s echo server at `at`, then checks a
/// full request byte for byte (the tag proves `to` answered, not a pod
/// with the same address elsewhere).
fn request_ok(from: &Pod, to: &Pod, at: Ipv4Addr) -> String {
    wait_until(
        &format!("{} to reach {} at {at}", from.tag(), to.tag()),
        Duration::from_secs(30),
        || {
            from.tcp_request_at(to, at, 1024, &["--timeout", "2"])
                .is_ok()
        },
    );
    match from.tcp_request_at(to, at, TCP_BYTES, &[]) {
        Ok(report) => {
            assert!(report.starts_with("ok "), "{report}");
            report
        }
        Err(e) => panic!("TCP {} -> {} at {at}: {e}", from.tag(), to.tag()),
    }
}

/// Counts, on a gateway, every IPv4 packet through the tunnel and those
/// with a source or destination outside the global range.
fn watch_tunnel(gw: &Node) {
    let rules = |dir: &str, iface: &str| {
        format!(
            "{iface} \"{TUNNEL_IFNAME}\" counter comment \"tunnel {dir}\"
            {iface} \"{TUNNEL_IFNAME}\" ip saddr != 242.0.0.0/8 counter comment \"tunnel {dir} non-global source\"
            {iface} \"{TUNNEL_IFNAME}\" ip daddr != 242.0.0.0/8 counter comment \"tunnel {dir} non-global destination\""
        )
    };
    let script = format!(
        "table ip gn-probe {{
            chain out {{ type filter hook postrouting priority 500; policy accept;
            {}
            }}
            chain in {{ type filter hook prerouting priority -500; policy accept;
            {}
            }}
        }}",
        rules("out", "oifname"),
        rules("in", "iifname")
    );
    gw.ns.nft(&script);
}

fn assert_only_global_addresses_crossed(gw: &Node) {
    let counts = probe_counts(&gw.ns, "gn-probe");
    eprintln!("{}/{} tunnel counters: {counts:?}", gw.cluster_id, gw.name);
    for dir in ["out", "in"] {
        assert!(counts[&format!("tunnel {dir}")] > 0, "{counts:?}");
        for what in ["source", "destination"] {
            assert_eq!(
                counts[&format!("tunnel {dir} non-global {what}")],
                0,
                "a non-global {what} crossed the tunnel ({dir}) on {}: {counts:?}",
                gw.cluster_id
            );
        }
    }
}

/// The value of a globalnet gauge of `node` for `cidr`.
fn gauge(node: &Node, name: &str, cidr: &str) -> Option<f64> {
    parse_metrics(&node.metrics())
        .into_iter()
        .find(|s| s.name == name && s.label("cidr") == Some(cidr))
        .map(|s| s.value)
}

fn refused_gauge(node: &Node) -> Option<f64> {
    parse_metrics(&node.metrics())
        .into_iter()
        .find(|s| s.name == "strait_globalnet_exports_refused")
        .map(|s| s.value)
}

/// The `global_cidr` of each Cluster object in the broker.
fn broker_global_cidrs(set: &ClusterSet) -> BTreeMap<String, Vec<String>> {
    set.broker()
        .objects("clusters")
        .into_iter()
        .map(|(_, cluster)| {
            let id = str_at(&cluster, &["spec", "cluster_id"])
                .unwrap()
                .to_string();
            let cidrs = cluster["spec"]["global_cidr"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            (id, cidrs)
        })
        .collect()
}

#[test]
fn overlapping_clusters_reach_exported_services_through_global_ips() {
    let (set, ingress) = clusters(&["a", "b"]);
    let (a, b) = (set.cluster("a"), set.cluster("b"));
    for cluster in [a, b] {
        watch_tunnel(cluster.gateway());
    }

    // Distinct slices, published where Submariner has them.
    let cidrs = broker_global_cidrs(&set);
    eprintln!("global CIDRs: {cidrs:?}, ingress IPs: {ingress:?}");
    let a_cidr = global_cidr(a.gateway()).expect("a's global CIDR");
    let b_cidr = global_cidr(b.gateway()).expect("b's global CIDR");
    assert_ne!(a_cidr, b_cidr);
    assert_eq!(cidrs["a"], vec![a_cidr.clone()]);
    assert_eq!(cidrs["b"], vec![b_cidr.clone()]);
    for (id, cidr) in [("a", &a_cidr), ("b", &b_cidr)] {
        let endpoint = set.broker().endpoint(id).expect("an endpoint");
        let subnets = endpoint["spec"]["subnets"].as_sequence().unwrap();
        assert_eq!(subnets.len(), 1, "{id}: {subnets:?}");
        assert_eq!(subnets[0].as_str(), Some(cidr.as_str()));
    }

    // Who B's server sees: only A's egress pool.
    let pool = egress_ips(a.gateway()).expect("a's egress pool");
    b.pod(0).ns.nft(&format!(
        "table ip gn-seen {{ chain input {{ type filter hook input priority 0; policy accept;
                tcp dport {ECHO_PORT} ip saddr {pool} counter comment \"from a's egress pool\"
                tcp dport {ECHO_PORT} ip saddr != {pool} counter comment \"from elsewhere\"
            }}
            }}"
    ));

    let at = |id: &str, export: &'static str| ingress[&(id.to_string(), export)];
    let report = request_ok(a.pod(0), b.pod(0), at("b", EXPORT));
    eprintln!("a -> b's export at {}: {report}", at("b", EXPORT));
    let seen = probe_counts(&b.pod(0).ns, "gn-seen");
    assert!(seen["from a's egress pool"] > 0, "{seen:?}");
    assert_eq!(seen["from elsewhere"], 0, "{seen:?}");

    let report = request_ok(b.pod(0), a.pod(0), at("a", EXPORT));
    eprintln!("b -> a's export at {}: {report}", at("a", EXPORT));
    // Worker-node pods: over VXLAN to their gateway, translated there.
    for (from, to) in [(a, b), (b, a)] {
        let target = at(to.id(), WORKER_EXPORT);
        let report = request_ok(from.pod(1), to.pod(1), target);
        eprintln!(
            "{} -> {} at {target}: {report}",
            from.pod(1).tag(),
            to.pod(1).tag()
        );
    }

    // An ingress IP is for remote clusters: a host on the WAN sending to
    // it through b's gateway is not let in.
    let wan = set.wan();
    wan.ok(&["ip", "addr", "add", "198.51.100.200/24", "dev", "br0"]);
    let b_wan = b.gateway().wan_ip.unwrap().to_string();
    wan.ok(&["ip", "route", "add", "242.0.0.0/8", "via", &b_wan]);
    let stranger = wan.exec(&[
        env!("CARGO_BIN_EXE_tcp-echo"),
        "request",
        &format!("{}:{ECHO_PORT}", at("b", EXPORT)),
        "16",
        &b.pod(0).tag(),
        "--timeout",
        "2",
    ]);
    assert!(
        !stranger.status.success(),
        "a WAN host reached b's export: {}",
        String::from_utf8_lossy(&stranger.stdout)
    );

    // The health checks run between global addresses too.
    set.wait_connected(Duration::from_secs(20));
    for cluster in [a, b] {
        assert_only_global_addresses_crossed(cluster.gateway());
    }

    // Submariner's gauges, by the cluster's global CIDR.
    let gw = a.gateway();
    assert_eq!(
        gauge(gw, "submariner_global_ingress_IP_allocated", &a_cidr),
        Some(2.0)
    );
    assert_eq!(
        gauge(gw, "submariner_cluster_global_egress_IP_allocated", &a_cidr),
        Some(8.0)
    );
    assert_eq!(
        gauge(gw, "submariner_global_egress_IP_allocated", &a_cidr),
        Some(0.0)
    );
    // 8 egress, the health check, two ingress IPs, of 65,534 hosts.
    assert_eq!(
        gauge(gw, "submariner_global_IP_allocated", &a_cidr),
        Some(11.0)
    );
    assert_eq!(
        gauge(gw, "submariner_global_IP_availability", &a_cidr),
        Some(65_523.0)
    );
}

#[test]
fn three_overlapping_clusters_each_reach_each() {
    let ids = ["a", "b", "c"];
    let (set, ingress) = clusters(&ids);
    let cidrs: BTreeSet<String> = ids
        .iter()
        .map(|id| global_cidr(set.cluster(id).gateway()).unwrap())
        .collect();
    assert_eq!(cidrs.len(), 3, "slices shared: {cidrs:?}");
    for cluster in set.clusters() {
        watch_tunnel(cluster.gateway());
    }
    for from in ids {
        for to in ids.iter().filter(|to| **to != from) {
            let (p, q) = (set.cluster(from).pod(0), set.cluster(to).pod(0));
            let at = ingress[&(to.to_string(), EXPORT)];
            let report = request_ok(p, q, at);
            eprintln!("{from} -> {to} at {at}: {report}");
        }
    }
    for cluster in set.clusters() {
        assert_only_global_addresses_crossed(cluster.gateway());
    }
}

#[test]
fn unrelated_exports_come_and_go_during_a_long_transfer() {
    let (set, ingress) = clusters(&["a", "b"]);
    let (a, b) = (set.cluster("a"), set.cluster("b"));
    let at = ingress[&("b".to_string(), EXPORT)];
    request_ok(a.pod(0), b.pod(0), at);

    // About 12 s of echo at a paced 500 kB/s.
    let args = a.pod(0).tcp_request_args_at(
        b.pod(0),
        at,
        6_000_000,
        &["--rate", "500000", "--timeout", "60"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = set.root().join("long-transfer.log");
    let mut transfer = a.pod(0).ns.spawn(&args, &[], &log);

    let gw = b.gateway();
    let listing = || gw.ok(&["nft", "-s", "list", "table", "inet", "strait"]);
    for round in 0..4 {
        let name = format!("other{round}");
        export(gw, &name, Ipv4Addr::new(10, 1, 1, 200), 8000 + round);
        let rule = format!("globalnet ingress {name}");
        wait_until(
            &format!("the rule of {name}"),
            Duration::from_secs(10),
            || listing().contains(&rule),
        );
        unexport(gw, &name);
        wait_until(
            &format!("{name}'s rule gone"),
            Duration::from_secs(10),
            || !listing().contains(&rule),
        );
    }
    assert!(
        !transfer.exited(),
        "the transfer ended before the exports changed: {}",
        transfer.log()
    );
    wait_until("the transfer to end", Duration::from_secs(60), || {
        transfer.exited()
    });
    let report = transfer.log();
    eprintln!("long transfer: {report}");
    assert!(report.starts_with("ok "), "{report}");
}

#[test]
fn ingress_ips_run_out_are_reused_and_survive_a_restart() {
    require_root();
    // Slices of 16 addresses: 14 hosts, 8 for egress, one health check,
    // 5 ingress IPs.
    let mut set = ClusterSet::build(&[overlapping("a", 1)], options("cluster_size: 16"));
    let pod_ip = set.cluster("a").pod(0).ip;
    let gw = set.cluster("a").gateway();
    let cidr = global_cidr(gw).expect("a global CIDR");
    assert_eq!(cidr, "242.0.0.0/28");

    let names: Vec<String> = (1..=6).map(|i| format!("svc{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        export(gw, name, pod_ip, 8000 + i as u16);
    }
    write_export(gw, "bad", "name: bad\naddress: 10.9.0.1\nport: 80\n");
    wait_until("six exports placed", Duration::from_secs(10), || {
        refusal(gw, "svc6").is_some() && refusal(gw, "bad").is_some()
    });
    let exhausted = refusal(gw, "svc6").unwrap();
    assert!(exhausted.contains("no free global IP"), "{exhausted}");
    let bad = refusal(gw, "bad").unwrap();
    assert!(bad.contains("not in this cluster's"), "{bad}");
    let ips: BTreeMap<String, Ipv4Addr> = names[..5]
        .iter()
        .map(|n| (n.clone(), ingress_ip(gw, n).expect("an ingress IP")))
        .collect();
    assert_eq!(ips.values().collect::<BTreeSet<_>>().len(), 5);
    wait_until("the gauges to follow", Duration::from_secs(5), || {
        refused_gauge(gw) == Some(2.0)
    });
    assert_eq!(
        gauge(gw, "submariner_global_IP_availability", &cidr),
        Some(0.0)
    );
    assert_eq!(
        gauge(gw, "submariner_global_ingress_IP_allocated", &cidr),
        Some(5.0)
    );

    // One released: the waiting export gets its address.
    unexport(gw, "svc2");
    wait_until(
        "svc6 to get svc2's address",
        Duration::from_secs(10),
        || ingress_ip(gw, "svc6") == Some(ips["svc2"]),
    );
    let before = state(gw).expect("a state");

    // A restart keeps the slice and every address.
    let node = set.cluster_mut("a").gateway_mut();
    node.restart_agent();
    node.wait_ready(Duration::from_secs(30));
    let gw = set.cluster("a").gateway();
    assert_eq!(global_cidr(gw).as_deref(), Some(cidr.as_str()));
    assert_eq!(state(gw).as_ref(), Some(&before));
    let claims: Vec<PathBuf> = std::fs::read_dir(set.broker().path.join("globalnet"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(claims.len(), 1, "{claims:?}");

    // Bad settings are refused before anything is touched, with the
    // field and the reason; the running agent is not disturbed.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    for (setting, field) in [
        ("egress_ips: 14", "globalnet.egress_ips"),
        ("cidr_range: 10.0.0.0/8", "globalnet.cidr_range"),
    ] {
        let bad = set.root().join("bad-config.yaml");
        let text = config.replace(
            "  cluster_size: 16\n",
            &format!("  cluster_size: 16\n  {setting}\n"),
        );
        std::fs::write(&bad, text).unwrap();
        let bin = strait_netns_tests::strait_bin();
        let out = gw.exec(&[
            &bin.to_string_lossy(),
            "agent",
            "--config",
            &bad.to_string_lossy(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{setting}: started");
        assert!(stderr.contains(field), "{setting}: {stderr}");
    }
    assert!(gw.ready());
    assert_eq!(state(gw).as_ref(), Some(&before));
}

#[test]
fn only_the_active_gateway_translates() {
    require_root();
    // Two gateway-capable nodes in a, both claiming a's slice at the same
    // moment; the newest endpoint is the active gateway.
    let a = ClusterSpec::new(
        "a",
        1,
        vec![NodeSpec::gateway("a-gw1", 1), NodeSpec::gateway("a-gw2", 1)],
    )
    .with_cidrs(POD_CIDR, SERVICE_CIDR);
    let set = ClusterSet::build(&[a, overlapping("b", 2)], options(""));
    let (a, b) = (set.cluster("a"), set.cluster("b"));
    let gws = [a.node("a-gw1"), a.node("a-gw2")];
    assert_eq!(
        global_cidr(gws[0]),
        global_cidr(gws[1]),
        "one slice per cluster"
    );

    let gw = b.gateway();
    export(gw, EXPORT, b.pod(0).ip, ECHO_PORT);
    let at = wait_ingress_ip(gw, EXPORT, Duration::from_secs(10));
    let translating = |node: &Node| {
        node.ok(&["nft", "-s", "list", "table", "inet", "strait"])
            .contains("globalnet egress")
    };
    wait_until(
        "one gateway of a to translate",
        Duration::from_secs(10),
        || gws.iter().filter(|n| translating(n)).count() == 1,
    );
    // Pods on both nodes get there: the passive gateway's over VXLAN to
    // the active one, translated there and answered there.
    for n in 0..2 {
        let report = request_ok(a.pod(n), b.pod(0), at);
        eprintln!("{} -> {at}: {report}", a.pod(n).tag());
    }
    assert_eq!(gws.iter().filter(|n| translating(n)).count(), 1);
}
