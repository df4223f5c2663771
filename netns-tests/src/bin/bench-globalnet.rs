//! Globalnet's cost: pod-to-pod throughput and TCP connections per second
//! across two simulated clusters through globalnet's translation, and over
//! the same path without it, interleaved in one run (as root;
//! `netns-tests/bench-globalnet.sh` runs it and writes the result into
//! BENCHMARKS.md):
//!
//!   bench-globalnet [--seconds N] [--rounds R] [--root DIR] [--journal FILE]
//!
//! Two cluster sets are built with the netns harness, both with `strait
//! agent` on every node (clusters `a` and `b`: a gateway node and a worker
//! node, a pod on each):
//!
//! - **globalnet**: both clusters with the same pod and service CIDRs,
//!   globalnet on; each target pod's echo server and iperf3 server are
//!   exported, and the client addresses their ingress IPs (egress SNAT in
//!   a's gateway, ingress DNAT in b's);
//! - **plain**: distinct CIDRs, no globalnet; the client addresses the
//!   pods directly.
//!
//! Paths (a → b): gateway → gateway (a-gw → b-gw) and non-gateway →
//! non-gateway (a-w1 → b-w1). Each round runs every (path, variant) once,
//! the order rotating each round: `iperf3 -c -t N` (one TCP stream,
//! receiver figure), then N seconds of connections to the echo server,
//! [`PARALLEL`] at a time (connect, exchange a byte, close). Prints
//! tab-separated lines `run ROUND PATH VARIANT METRIC VALUE LOAD` (METRIC
//! `mbits` or `cps`; LOAD the host's 1-minute load average after the
//! run), then `median PATH VARIANT METRIC VALUE`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::exit;
use std::time::Duration;

use strait_netns_tests::bench::{
    connection_rate, iperf, iperf_server, load_average, median, BenchArgs, IPERF_PORT,
};
use strait_netns_tests::cluster::ECHO_PORT;
use strait_netns_tests::globalnet::{export, wait_ingress_ip};
use strait_netns_tests::{ClusterSet, ClusterSpec, Options, Pod, Process};

/// Connections in flight at a time in the connection-rate runs.
const PARALLEL: usize = 4;

/// (name, source node, target node), a → b.
const PATHS: [(&str, &str, &str); 2] = [
    ("gateway → gateway", "a-gw", "b-gw"),
    ("non-gateway → non-gateway", "a-w1", "b-w1"),
];

fn fail(message: &str) -> ! {
    eprintln!("bench-globalnet: {message}");
    exit(1)
}

fn pod<'s>(set: &'s ClusterSet, node: &str) -> &'s Pod {
    &set.cluster(&node[..1]).node(node).pods[0]
}

/// A target pod as a variant reaches it: the echo server's and iperf3's
/// addresses.
struct Target {
    echo: Ipv4Addr,
    iperf: Ipv4Addr,
}

/// Exports the target pods' echo and iperf3 servers in the globalnet set;
/// returns their ingress IPs by node.
fn export_targets(set: &ClusterSet) -> Vec<Target> {
    let gw = set.cluster("b").gateway();
    PATHS
        .iter()
        .map(|(_, _, node)| {
            let p = pod(set, node);
            let (echo, iperf) = (format!("{node}-echo"), format!("{node}-iperf"));
            export(gw, &echo, p.ip, ECHO_PORT);
            export(gw, &iperf, p.ip, IPERF_PORT);
            Target {
                echo: wait_ingress_ip(gw, &echo, Duration::from_secs(10)),
                iperf: wait_ingress_ip(gw, &iperf, Duration::from_secs(10)),
            }
        })
        .collect()
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| fail(&format!("no {name} beside this binary: build it")))
}

fn main() {
    let args = BenchArgs::parse("bench-globalnet");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        fail("run as root: it creates network namespaces");
    }
    let echo = sibling("tcp-echo");
    let options = |tag: &str, globalnet: bool| {
        let mut options = Options::new().with_echo(&echo);
        options.root = args.root.as_ref().map(|r| r.join(tag));
        options.journal = args.journal.clone();
        options.globalnet = globalnet.then(String::new);
        options
    };
    let plain_specs = [
        ClusterSpec::gateway_and_worker("a", 1),
        ClusterSpec::gateway_and_worker("b", 2),
    ];
    let (pods, services) = (&plain_specs[0].pod_cidr, &plain_specs[0].service_cidr);
    let overlapping = plain_specs.clone().map(|s| s.with_cidrs(pods, services));

    eprintln!("bench-globalnet: building the globalnet set (identical CIDRs)");
    let globalnet = ClusterSet::build(&overlapping, options("globalnet", true));
    let exported = export_targets(&globalnet);
    eprintln!("bench-globalnet: building the plain set (distinct CIDRs)");
    let plain = ClusterSet::build(&plain_specs, options("plain", false));
    let direct: Vec<Target> = PATHS
        .iter()
        .map(|(_, _, node)| {
            let ip = pod(&plain, node).ip;
            Target {
                echo: ip,
                iperf: ip,
            }
        })
        .collect();
    let variants: [(&str, &ClusterSet, &[Target]); 2] = [
        ("plain", &plain, &direct),
        ("globalnet", &globalnet, &exported),
    ];
    let mut _servers: Vec<Process> = Vec::new();
    for (tag, set, targets) in variants {
        for ((name, from, to), target) in PATHS.iter().zip(targets) {
            let log = set.root().join(format!("iperf3-{to}.log"));
            _servers.push(iperf_server(pod(set, to), &log));
            strait_netns_tests::wait_until(
                &format!("{name} ({tag}): {from} to reach {to}"),
                Duration::from_secs(30),
                || {
                    pod(set, from)
                        .tcp_request_at(pod(set, to), target.echo, 16, &["--timeout", "1"])
                        .is_ok()
                },
            );
        }
    }

    // (path, variant, metric) → figures.
    let mut runs: Vec<(usize, usize, Vec<f64>, Vec<f64>)> = Vec::new();
    for path in 0..PATHS.len() {
        for variant in 0..variants.len() {
            runs.push((path, variant, Vec::new(), Vec::new()));
        }
    }
    let round_count = args.rounds as usize;
    for round in 0..round_count {
        let n = runs.len();
        for i in 0..n {
            let at = (i + round) % n;
            let (path, variant, _, _) = runs[at];
            let (name, from, _) = PATHS[path];
            let (tag, set, targets) = variants[variant];
            let target = &targets[path];
            let what = format!("{name} ({tag}), round {}", round + 1);
            let from = pod(set, from);
            let (mbits, _) = iperf(from, target.iperf, args.seconds)
                .unwrap_or_else(|e| fail(&format!("{what}: {e}")));
            println!(
                "run\t{}\t{name}\t{tag}\tmbits\t{mbits:.0}\t{}",
                round + 1,
                load_average()
            );
            let cps = connection_rate(from, target.echo, ECHO_PORT, args.seconds, PARALLEL)
                .unwrap_or_else(|e| fail(&format!("{what}: {e}")));
            println!(
                "run\t{}\t{name}\t{tag}\tcps\t{cps:.0}\t{}",
                round + 1,
                load_average()
            );
            runs[at].2.push(mbits);
            runs[at].3.push(cps);
        }
    }
    for (path, variant, mbits, cps) in &mut runs {
        let (name, tag) = (PATHS[*path].0, variants[*variant].0);
        println!("median\t{name}\t{tag}\tmbits\t{:.0}", median(mbits));
        println!("median\t{name}\t{tag}\tcps\t{:.0}", median(cps));
    }
}
