//! The one-host demo behind `netns-tests/demo.sh` (as root):
//!
//!   strait-demo up       two simulated clusters joined by `strait agent`s
//!                        through a directory broker; shows pod-to-pod ping
//!                        and TCP across them, `strait show connections`
//!                        and the metrics; leaves them running
//!   strait-demo up --globalnet
//!                        the same with identical pod and service CIDRs in
//!                        both clusters: pods reach each other's exported
//!                        echo servers through globalnet's ingress IPs
//!   strait-demo status   what is up, and how to poke at it
//!   strait-demo down     stops every process and removes every namespace
//!                        that `up` made (named in /run/strait-demo/state)
//!
//! `STRAIT_BIN` names the strait binary (default: `strait` beside this
//! one); `STRAIT_DEMO_DIR` the state directory (default /run/strait-demo).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant};

use strait_netns_tests::cluster::{journal_state, parse_metrics, teardown_persisted, ECHO_PORT};
use strait_netns_tests::globalnet;
use strait_netns_tests::{ClusterSet, ClusterSpec, NodeSpec, Options, Pod};

const DOWN: &str = "sudo netns-tests/demo.sh down";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().cloned().unwrap_or_else(|| "up".into());
    let globalnet = match &args.get(1..).unwrap_or_default() {
        [] => false,
        [flag] if flag == "--globalnet" && command == "up" => true,
        _ => fail("usage: strait-demo up [--globalnet] | status | down"),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        fail(
            "run as root (it creates network namespaces and TUN devices): sudo netns-tests/demo.sh",
        );
    }
    let dir = std::env::var_os("STRAIT_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/strait-demo"));
    match command.as_str() {
        "up" => up(&dir, globalnet),
        "down" => down(&dir),
        "status" => status(&dir),
        _ => fail("usage: strait-demo up [--globalnet] | status | down"),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("strait-demo: {message}");
    exit(1)
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(name);
    path.exists().then_some(path)
}

fn up(dir: &Path, globalnet: bool) {
    let journal = dir.join("state");
    let state = journal_state(&journal);
    if !state.namespaces.is_empty() || !state.processes.is_empty() {
        if state.complete {
            println!("The demo is already up; tear it down first with: {DOWN}");
            print_info(dir);
            return;
        }
        println!("A previous `up` did not finish; removing what it left first.");
        teardown_persisted(&journal);
    }
    let _ = std::fs::remove_dir_all(dir);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)
        .unwrap_or_else(|e| fail(&format!("creating {}: {e}", logs.display())));

    let strait_bin = std::env::var_os("STRAIT_BIN")
        .map(PathBuf::from)
        .or_else(|| sibling("strait"))
        .unwrap_or_else(|| fail("no strait binary: set STRAIT_BIN or build it beside strait-demo"));
    let echo_bin = sibling("tcp-echo").unwrap_or_else(|| {
        fail("no tcp-echo beside strait-demo: cargo build --release -p strait-netns-tests")
    });
    for tool in ["ip", "ping", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            fail(&format!("{tool} is missing (demo.sh installs it)"));
        }
    }

    let mut options = Options::using(strait_bin.clone()).with_echo(&echo_bin);
    options.root = Some(dir.to_path_buf());
    options.log_dir = Some(logs.clone());
    options.journal = Some(journal.clone());
    options.detach = true;
    if globalnet {
        options.globalnet = Some(String::new());
    }

    let mut specs = [
        ClusterSpec::new(
            "cluster-a",
            1,
            vec![NodeSpec::gateway("a-gw", 1), NodeSpec::worker("a-n1", 1)],
        ),
        ClusterSpec::new(
            "cluster-b",
            2,
            vec![NodeSpec::gateway("b-gw", 1), NodeSpec::worker("b-n1", 1)],
        ),
    ];
    if globalnet {
        // The same CIDRs on both sides: only globalnet connects them.
        let (pods, services) = (specs[0].pod_cidr.clone(), specs[0].service_cidr.clone());
        specs = specs.map(|spec| spec.with_cidrs(&pods, &services));
    }
    step(if globalnet {
        "Strait demo: two simulated Kubernetes clusters with overlapping CIDRs, joined through globalnet"
    } else {
        "Strait demo: two simulated Kubernetes clusters on this machine"
    });
    for spec in &specs {
        println!(
            "  {}: pod CIDR {}, service CIDR {}, gateway node {} (LAN 172.16.{k}.10, WAN 198.51.100.{w}), worker node {} (LAN 172.16.{k}.11)",
            spec.id,
            spec.pod_cidr,
            spec.service_cidr,
            spec.nodes[0].name,
            spec.nodes[1].name,
            k = spec.index,
            w = 10 * spec.index + 1
        );
    }
    println!("  broker: dir:{}", dir.join("broker").display());
    println!(
        "  every node and pod is a network namespace; the WAN is a bridge joining the gateways"
    );

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        step("starting `strait agent` on every node");
        let started = Instant::now();
        let set = ClusterSet::build(&specs, options);
        println!("  agents ready (/readyz) after {:.1?}", started.elapsed());
        if globalnet {
            show_globalnet(&set, dir, &strait_bin, &echo_bin);
        } else {
            show(&set, dir, &strait_bin, &echo_bin);
        }
        set.persist()
    }));
    match outcome {
        Ok(persisted) => {
            step("the clusters stay up");
            println!(
                "  {} namespaces, {} processes (agents in their own process groups), listed in {}",
                persisted.namespaces.len(),
                persisted.pids.len(),
                journal.display()
            );
            println!("  agent logs: {}", logs.display());
            print_info(dir);
        }
        Err(_) => {
            let report = teardown_persisted(&journal);
            eprintln!(
                "\nstrait-demo: the demo failed (see above); removed {} namespaces; agent logs are in {}",
                report.namespaces.len(),
                logs.display()
            );
            exit(1)
        }
    }
}

/// Shows traffic between the clusters and where to look; panics on failure.
fn show(set: &ClusterSet, dir: &Path, strait_bin: &Path, echo_bin: &Path) {
    let a = set.cluster("cluster-a");
    let b = set.cluster("cluster-b");
    let (pa, pb) = (a.pod(0), b.pod(0));

    step("waiting for the tunnel between the gateways");
    let started = Instant::now();
    while !pa.ping_once(pb.ip, 1) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pod {} cannot reach pod {} after 30 s",
            pa.ip,
            pb.ip
        );
    }
    println!("  first pod-to-pod echo after {:.1?}", started.elapsed());

    // Gateway-node pods both ways, then pods on the worker nodes, whose
    // traffic goes over VXLAN to their cluster's gateway first.
    let (wa, wb) = (a.pod(1), b.pod(1));
    for (from, to) in [(pa, pb), (pb, pa), (wa, wb), (wb, wa)] {
        step(&format!(
            "pod {} ({}, cluster {}) -> pod {} ({}, cluster {})",
            from.name, from.ip, from.cluster_id, to.name, to.ip, to.cluster_id
        ));
        let out = from.exec(&["ping", "-n", "-c", "3", "-i", "0.2", &to.ip.to_string()]);
        print!("{}", indent(&String::from_utf8_lossy(&out.stdout)));
        assert!(out.status.success(), "ping failed");
        match from.tcp_request(to, 64 * 1024) {
            Ok(report) => println!(
                "  TCP: 64 KiB echoed back byte for byte by {}: {report}",
                to.tag()
            ),
            Err(e) => panic!("TCP request failed: {e}"),
        }
    }

    show_status(set);
    write_info(set, dir, strait_bin, echo_bin, pa, pb, None);
}

/// Globalnet: each cluster exports its pods' echo servers; pods reach the
/// other cluster's through their ingress IPs; panics on failure.
fn show_globalnet(set: &ClusterSet, dir: &Path, strait_bin: &Path, echo_bin: &Path) {
    let a = set.cluster("cluster-a");
    let b = set.cluster("cluster-b");
    step("each cluster's slice of 242.0.0.0/8 and its exports");
    let mut ingress = Vec::new();
    for cluster in [a, b] {
        let gw = cluster.gateway();
        for pod in cluster.pods() {
            globalnet::export(gw, &pod.name, pod.ip, ECHO_PORT);
        }
        let ips: Vec<Ipv4Addr> = cluster
            .pods()
            .map(|pod| globalnet::wait_ingress_ip(gw, &pod.name, Duration::from_secs(10)))
            .collect();
        println!(
            "  {}: global CIDR {}, egress pool {}",
            cluster.id(),
            globalnet::global_cidr(gw).unwrap_or_default(),
            globalnet::egress_ips(gw).unwrap_or_default()
        );
        for (pod, ip) in cluster.pods().zip(&ips) {
            println!(
                "    export {}: {}:{ECHO_PORT} (pod {}) -> ingress IP {ip}",
                pod.name,
                pod.ip,
                pod.tag()
            );
        }
        ingress.push(ips);
    }
    let (pa, pb) = (a.pod(0), b.pod(0));
    step("waiting for the tunnel between the gateways");
    let started = Instant::now();
    while pa
        .tcp_request_at(pb, ingress[1][0], 16, &["--timeout", "1"])
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pod {} cannot reach {} at {} after 30 s",
            pa.tag(),
            pb.tag(),
            ingress[1][0]
        );
    }
    println!(
        "  first request through globalnet after {:.1?}",
        started.elapsed()
    );
    for (from, to, ips) in [(a, b, &ingress[1]), (b, a, &ingress[0])] {
        for (n, from_pod) in from.pods().enumerate() {
            let (to_pod, at) = (to.pod(n), ips[n]);
            step(&format!(
                "pod {} ({}, cluster {}) -> {at} (the ingress IP of pod {} ({}, cluster {}))",
                from_pod.name,
                from_pod.ip,
                from.id(),
                to_pod.name,
                to_pod.ip,
                to.id()
            ));
            match from_pod.tcp_request_at(to_pod, at, 64 * 1024, &[]) {
                Ok(report) => println!(
                    "  TCP: 64 KiB echoed back byte for byte by {}: {report}",
                    to_pod.tag()
                ),
                Err(e) => panic!("TCP request failed: {e}"),
            }
        }
    }
    step("the translation in cluster-b's gateway (nft list table inet strait, nat chains)");
    let listing = b.gateway().ok(&["nft", "list", "table", "inet", "strait"]);
    for line in listing
        .lines()
        .filter(|l| l.contains("globalnet") || l.contains("dnat") || l.contains("chain pre"))
    {
        println!("  {}", line.trim());
    }
    step("globalnet metrics of cluster-a's gateway");
    for sample in parse_metrics(&a.gateway().metrics())
        .iter()
        .filter(|s| s.label("cidr").is_some())
    {
        println!(
            "    {}{{cidr=\"{}\"}} {}",
            sample.name,
            sample.label("cidr").unwrap_or_default(),
            sample.value
        );
    }
    show_status(set);
    write_info(set, dir, strait_bin, echo_bin, pa, pb, Some(ingress[1][0]));
}

/// `strait show connections` and the metrics of cluster-a's gateway.
fn show_status(set: &ClusterSet) {
    let a = set.cluster("cluster-a");
    step("`strait show connections`");
    let settled = Instant::now();
    let connected = loop {
        let all = ["cluster-a", "cluster-b"].iter().all(|id| {
            set.broker()
                .connections(id)
                .iter()
                .any(|c| c.status == "connected")
        });
        if all || settled.elapsed() > Duration::from_secs(15) {
            break all;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !connected {
        println!("  (the Gateway status does not say connected yet)");
    }
    match set.show_connections() {
        Ok(table) => print!("{}", indent(&table)),
        Err(e) => println!("  strait show connections failed: {e}"),
    }

    step("metrics (Prometheus text)");
    let gw = a.gateway();
    println!("  sudo {}", gw.metrics_command());
    let metrics = gw.metrics();
    for sample in parse_metrics(&metrics)
        .iter()
        .filter(|s| {
            s.name == "submariner_connections" || s.name == "submariner_connection_latency_seconds"
        })
        .take(6)
    {
        let labels: Vec<String> = sample
            .labels
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "remote_cluster" | "status"))
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        println!(
            "    {}{{{}}} {}",
            sample.name,
            labels.join(","),
            sample.value
        );
    }
}

fn write_info(
    set: &ClusterSet,
    dir: &Path,
    strait_bin: &Path,
    echo_bin: &Path,
    pa: &Pod,
    pb: &Pod,
    ingress_ip: Option<Ipv4Addr>,
) {
    let mut text = String::new();
    text.push_str("\n== try it\n");
    // An ingress IP forwards the exported port only: no ping.
    if ingress_ip.is_none() {
        text.push_str(&format!(
            "  sudo ip netns exec {} ping {}\n",
            pa.ns.name(),
            pb.ip
        ));
    }
    text.push_str(&format!(
        "  sudo ip netns exec {} {} request {}:7777 1000000 {}\n",
        pa.ns.name(),
        echo_bin.display(),
        ingress_ip.unwrap_or(pb.ip),
        pb.tag()
    ));
    text.push_str(&format!(
        "  sudo {} show connections --broker dir:{}\n",
        strait_bin.display(),
        set.broker().path.display()
    ));
    for cluster in set.clusters() {
        let gw = cluster.gateway();
        text.push_str(&format!("  sudo {}\n", gw.metrics_command()));
    }
    text.push_str(&format!(
        "  broker objects: ls {}/*; agent logs: {}/logs\n",
        set.broker().path.display(),
        dir.display()
    ));
    text.push_str(&format!("\n== tear it down\n  {DOWN}\n"));
    std::fs::write(dir.join("info"), text).expect("writing the demo's info file");
}

fn print_info(dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(dir.join("info")) {
        print!("{text}");
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn status(dir: &Path) {
    let state = journal_state(&dir.join("state"));
    if state.namespaces.is_empty() && state.processes.is_empty() {
        println!("The demo is not up (sudo netns-tests/demo.sh up).");
        return;
    }
    println!(
        "The demo is {}: {} namespaces, {} processes running:",
        if state.complete {
            "up"
        } else {
            "partly up (an `up` did not finish)"
        },
        state.namespaces.len(),
        state.processes.len()
    );
    for (pid, label) in &state.processes {
        println!("  pid {pid}: {label}");
    }
    print_info(dir);
}

fn down(dir: &Path) {
    let journal = dir.join("state");
    let report = teardown_persisted(&journal);
    if report.stopped.is_empty() && report.namespaces.is_empty() {
        println!("Nothing to tear down: the demo is not up.");
    } else {
        println!(
            "Stopped {} processes ({} needed SIGKILL), removed {} network namespaces.",
            report.stopped.len(),
            report.killed.len(),
            report.namespaces.len()
        );
        for (ns, pid) in &report.strangers {
            println!(
                "  note: pid {pid} (not started by the demo) still runs in {ns}; the namespace goes when it exits"
            );
        }
    }
    // Keep the logs for a look afterwards; drop the configs, keys, broker.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(|e| e.ok()) {
            if entry.file_name() == "logs" {
                continue;
            }
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
    if !report.namespaces.is_empty() && dir.join("logs").exists() {
        println!("Agent logs kept in {}.", dir.join("logs").display());
    }
}
