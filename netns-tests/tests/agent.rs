//! `strait agent` on simulated clusters (issue 4): gateways that find each
//! other through the directory broker and connect the clusters' pods.
//! Timings (join, restart loss) are printed with eprintln for the note;
//! only generous bounds are asserted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use strait_netns_tests::cluster::{base64, parse_metrics, str_at, Sample};
use strait_netns_tests::{
    require_root, unique_id, wait_until, ClusterSet, ClusterSpec, Node, Options, PingRun, Pod,
};

const TCP_BYTES: usize = 256 * 1024;

fn options() -> Options {
    Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo"))
}

fn spec(id: &str, index: u8) -> ClusterSpec {
    ClusterSpec::single_gateway(id, index, 1)
}

/// The clusters `ids` (numbered 1, 2, ...), a pod on each gateway, every
/// agent ready and every pod reaching every other cluster's pod.
fn clusters(ids: &[&str]) -> ClusterSet {
    require_root();
    let specs: Vec<ClusterSpec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| spec(id, i as u8 + 1))
        .collect();
    let set = ClusterSet::build(&specs, options());
    for from in ids {
        for to in ids.iter().filter(|to| *to != from) {
            wait_pods_reach(&set, from, to, Duration::from_secs(20));
        }
    }
    set
}

fn wait_pods_reach(set: &ClusterSet, from: &str, to: &str, limit: Duration) {
    let (p, q) = (set.cluster(from).pod(0), set.cluster(to).pod(0));
    wait_until(
        &format!("pod {} ({from}) to reach pod {} ({to})", p.ip, q.ip),
        limit,
        || p.ping_once(q.ip, 1),
    );
}

fn tcp_ok(from: &Pod, to: &Pod) {
    match from.tcp_request(to, TCP_BYTES) {
        Ok(report) => assert!(report.starts_with("ok "), "{report}"),
        Err(e) => panic!("TCP {} -> {}: {e}", from.tag(), to.tag()),
    }
}

fn ping_log(set: &ClusterSet, name: &str) -> PathBuf {
    set.root().join(format!("ping-{name}.log"))
}

/// Samples of `name` with `remote_cluster="remote"` on `node`.
fn remote_samples(node: &Node, name: &str, remote: &str) -> Vec<Sample> {
    parse_metrics(&node.metrics())
        .into_iter()
        .filter(|s| s.name == name && s.label("remote_cluster") == Some(remote))
        .collect()
}

/// The rows of a table printed with columns two or more spaces apart
/// (`strait show connections`), keyed by the header's column names.
fn table_rows(table: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = table.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    lines
        .map(|line| {
            columns
                .iter()
                .map(|c| c.to_string())
                .zip(line.split_whitespace().map(String::from))
                .collect()
        })
        .collect()
}

fn since(t: SystemTime, earlier: SystemTime) -> Duration {
    t.duration_since(earlier).unwrap_or_default()
}

#[test]
fn two_clusters_pods_reach_each_other_both_ways() {
    let set = clusters(&["a", "b"]);
    let (a, b) = (set.cluster("a").pod(0), set.cluster("b").pod(0));
    assert!(a.ping(b), "ping a -> b");
    assert!(b.ping(a), "ping b -> a");
    tcp_ok(a, b);
    tcp_ok(b, a);

    // What each gateway published.
    for id in ["a", "b"] {
        let endpoint = set
            .broker()
            .endpoint(id)
            .unwrap_or_else(|| panic!("no Endpoint of {id} in {:?}", set.broker().path));
        assert_eq!(str_at(&endpoint, &["spec", "backend"]), Some("wireguard"));
        let key = str_at(&endpoint, &["spec", "backend_config", "publicKey"]).unwrap_or("");
        assert_eq!(key.len(), 44, "publicKey {key:?} of {id}");
        let wan = set.cluster(id).gateway().wan_ip.unwrap().to_string();
        assert_eq!(
            str_at(&endpoint, &["spec", "public_ip"]),
            Some(wan.as_str())
        );
    }
    set.wait_connected(Duration::from_secs(20));
    let table = set.show_connections().expect("strait show connections");
    eprintln!("strait show connections:\n{table}");
    for ip in ["198.51.100.11", "198.51.100.21"] {
        assert!(table.contains(ip), "no {ip} in:\n{table}");
    }
    assert!(table.contains("connected"), "{table}");
}

#[test]
fn third_cluster_joins_while_traffic_flows() {
    let mut set = clusters(&["a", "b"]);
    let (a_ip, b_ip) = (set.cluster("a").pod(0).ip, set.cluster("b").pod(0).ip);
    let mut ab = set
        .cluster("a")
        .pod(0)
        .start_ping(b_ip, 4000, &ping_log(&set, "ab"));
    wait_until("pings a -> b to flow", Duration::from_secs(10), || {
        ab.replies().len() >= 20
    });

    set.add_cluster(spec("c", 3));
    let c_ip = set.cluster("c").pod(0).ip;
    let mut probes: Vec<(&str, PingRun)> = Vec::new();
    for (name, from, to) in [
        ("a->c", "a", c_ip),
        ("b->c", "b", c_ip),
        ("c->a", "c", a_ip),
        ("c->b", "c", b_ip),
    ] {
        let log = ping_log(&set, &name.replace("->", ""));
        probes.push((name, set.cluster(from).pod(0).start_ping(to, 3000, &log)));
    }
    let started = SystemTime::now();
    set.start_cluster("c");

    // When C's Endpoint file appears (its mtime: written, then renamed in).
    let deadline = Instant::now() + Duration::from_secs(30);
    let appeared = loop {
        if let Some(file) = set.broker().endpoint_files("c").first() {
            let seen = SystemTime::now();
            let mtime = std::fs::metadata(file)
                .and_then(|m| m.modified())
                .unwrap_or(seen);
            break mtime.min(seen);
        }
        assert!(
            Instant::now() < deadline,
            "C's Endpoint never appeared in {:?}",
            set.broker().path
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    wait_until(
        "the full mesh: a reply in each of a->c, b->c, c->a, c->b",
        Duration::from_secs(30),
        || probes.iter().all(|(_, p)| p.first_reply().is_some()),
    );
    let mut mesh = Duration::ZERO;
    let mut per_pair = Vec::new();
    for (name, probe) in &probes {
        let first = since(probe.first_reply().unwrap(), appeared);
        mesh = mesh.max(first);
        per_pair.push(format!("{name} {first:.3?}"));
    }
    eprintln!(
        "JOIN: C's agent started -> its Endpoint file: {:.3?}; Endpoint file -> full mesh \
         (first reply every way): {mesh:.3?} ({})",
        since(appeared, started),
        per_pair.join(", ")
    );

    ab.interrupt();
    let (sent, received) = ab.summary().expect("ping a -> b summary");
    eprintln!(
        "JOIN: a -> b while C joined: {} of {sent} echoes lost (10 ms interval), longest gap {:.3?}",
        sent - received,
        ab.longest_gap()
    );
    for (_, probe) in &mut probes {
        probe.interrupt();
    }
    assert!(
        mesh < Duration::from_secs(15),
        "full mesh took {mesh:?} after C's Endpoint appeared"
    );
    assert!(
        sent - received <= 100,
        "{} of {sent} a -> b echoes lost while C joined",
        sent - received
    );
    let (a, c) = (set.cluster("a").pod(0), set.cluster("c").pod(0));
    let b = set.cluster("b").pod(0);
    tcp_ok(a, c);
    tcp_ok(c, b);
    set.wait_connected(Duration::from_secs(20));
}

#[test]
fn a_leaving_cluster_is_removed_from_the_others() {
    let mut set = clusters(&["a", "b", "c"]);
    let c_cidrs = {
        let c = &set.cluster("c").spec;
        [c.pod_cidr.clone(), c.service_cidr.clone()]
    };
    let c_key = set
        .broker()
        .endpoint("c")
        .and_then(|e| str_at(&e, &["spec", "backend_config", "publicKey"]).map(String::from))
        .expect("C's Endpoint and public key");
    // What the checks below look for is there before C leaves.
    set.wait_connected(Duration::from_secs(20));
    for id in ["a", "b"] {
        let gw = set.cluster(id).gateway();
        assert!(
            !gw.routes_into(&c_cidrs[0]).is_empty(),
            "{id} has no route into C's pod CIDR {}:\n{}",
            c_cidrs[0],
            gw.routes()
        );
        match gw.wg_peers() {
            Some(peers) => assert!(peers.contains(&c_key), "{id}'s peers {peers:?}"),
            None => eprintln!("no UAPI socket under {:?}: peers not checked", gw.state_dir),
        }
    }

    let (clean, _) = set.cluster_mut("c").gateway_mut().stop_agent();
    let removed = set.broker().remove_endpoints("c");
    eprintln!("C's agent stopped (clean exit: {clean}); removed {removed} Endpoint file(s) of C");
    let started = Instant::now();
    for id in ["a", "b"] {
        let gw = set.cluster(id).gateway();
        wait_until(
            &format!("{id} to drop its routes into C's CIDRs"),
            Duration::from_secs(15),
            || c_cidrs.iter().all(|cidr| gw.routes_into(cidr).is_empty()),
        );
        wait_until(
            &format!("{id}'s Gateway status to drop its connection to C"),
            Duration::from_secs(15),
            || {
                set.broker()
                    .connections(id)
                    .iter()
                    .all(|c| c.remote_cluster != "c")
            },
        );
        if let Some(peers) = gw.wg_peers() {
            assert!(
                !peers.contains(&c_key),
                "{id} still has C's peer: {peers:?}"
            );
        }
    }
    eprintln!(
        "LEAVE: routes and connections to C gone after {:.3?}",
        started.elapsed()
    );
    let table = set.show_connections().expect("strait show connections");
    eprintln!("strait show connections after C left:\n{table}");
    let to_c: Vec<Vec<String>> = table_rows(&table)
        .into_iter()
        .filter(|row| row.get("REMOTE CLUSTER").map(String::as_str) == Some("c"))
        .map(|row| row.into_values().collect())
        .collect();
    assert!(to_c.is_empty(), "connections to C still shown: {to_c:?}");
    let (a, b) = (set.cluster("a").pod(0), set.cluster("b").pod(0));
    assert!(a.ping(b) && b.ping(a), "a <-> b after C left");
    tcp_ok(a, b);
}

#[test]
fn gateway_agent_restart_loses_little_traffic() {
    let mut set = clusters(&["a", "b"]);
    let b_ip = set.cluster("b").pod(0).ip;
    let key_before = set
        .broker()
        .endpoint("a")
        .and_then(|e| str_at(&e, &["spec", "backend_config", "publicKey"]).map(String::from));
    let mut ping = set
        .cluster("a")
        .pod(0)
        .start_ping(b_ip, 4000, &ping_log(&set, "restart"));
    wait_until("pings a -> b to flow", Duration::from_secs(10), || {
        ping.replies().len() >= 30
    });

    let gw = set.cluster_mut("a").gateway_mut();
    let stopping = Instant::now();
    let (clean, log) = gw.stop_agent();
    let stop_took = stopping.elapsed();
    assert!(clean, "the agent did not exit cleanly on SIGTERM:\n{log}");
    let starting = Instant::now();
    gw.start_agent();
    gw.wait_ready(Duration::from_secs(30));
    let ready_took = starting.elapsed();
    let replies_at_ready = ping.replies().len();
    wait_until(
        "pings a -> b to flow again after the restart",
        Duration::from_secs(30),
        || ping.replies().len() >= replies_at_ready + 100,
    );
    ping.interrupt();
    let (sent, received) = ping.summary().expect("ping summary");
    let lost = sent - received;
    eprintln!(
        "RESTART: {lost} of {sent} echoes lost at 10 ms intervals (longest gap between replies \
         {:.3?}); SIGTERM to exit {stop_took:.3?}, start to /readyz {ready_took:.3?}",
        ping.longest_gap()
    );
    assert!(
        ping.longest_gap() < Duration::from_secs(10),
        "traffic stopped for {:?}",
        ping.longest_gap()
    );

    let key_after = set
        .broker()
        .endpoint("a")
        .and_then(|e| str_at(&e, &["spec", "backend_config", "publicKey"]).map(String::from));
    assert_eq!(key_before, key_after, "the restart changed the public key");
    let (a, b) = (set.cluster("a").pod(0), set.cluster("b").pod(0));
    tcp_ok(a, b);
    tcp_ok(b, a);
}

#[test]
fn malformed_and_overlapping_endpoints_are_ignored() {
    let mut set = clusters(&["a", "b"]);
    let broker = set.broker().clone();

    let garbage = format!("garbage-{}.yaml", unique_id());
    broker.write_raw(
        &format!("endpoints/{garbage}"),
        "apiVersion: submariner.io/v1\nkind: Endpoint\nspec: {cluster_id: [unclosed\n\t- :: !!\n",
    );

    // A well-formed Endpoint of a cluster "rogue" claiming part of B's pod
    // CIDR (B's own pod lives in it), made from B's Endpoint.
    let b_endpoint = broker.endpoint("b").expect("B's Endpoint");
    let rogue_subnet = set.cluster("b").gateway().pod_subnet.clone();
    let cable = "submariner-cable-rogue-198-51-100-250";
    let mut rogue = b_endpoint.clone();
    let set_str = |v: &mut serde_yaml::Value, path: &[&str], text: &str| {
        let mut at = v;
        for key in &path[..path.len() - 1] {
            at = at
                .get_mut(*key)
                .unwrap_or_else(|| panic!("no {key} in B's Endpoint"));
        }
        at[path[path.len() - 1]] = serde_yaml::Value::String(text.into());
    };
    set_str(&mut rogue, &["metadata", "name"], &format!("rogue-{cable}"));
    set_str(&mut rogue, &["spec", "cluster_id"], "rogue");
    set_str(&mut rogue, &["spec", "cable_name"], cable);
    set_str(&mut rogue, &["spec", "hostname"], "rogue-gw");
    set_str(&mut rogue, &["spec", "private_ip"], "172.16.99.10");
    set_str(&mut rogue, &["spec", "public_ip"], "198.51.100.250");
    set_str(&mut rogue, &["spec", "healthCheckIP"], "10.99.0.1");
    set_str(
        &mut rogue,
        &["spec", "backend_config", "publicKey"],
        &base64(&[0x5a; 32]),
    );
    if let Some(labels) = rogue
        .get_mut("metadata")
        .and_then(|m| m.get_mut("labels"))
        .and_then(|l| l.as_mapping_mut())
    {
        for (_, value) in labels.iter_mut() {
            if value.as_str() == Some("b") {
                *value = serde_yaml::Value::String("rogue".into());
            }
        }
    }
    rogue["spec"]["subnets"] = serde_yaml::Value::Sequence(vec![rogue_subnet.clone().into()]);
    let rogue_file = format!("endpoints/rogue-{cable}.yaml");
    broker.write_raw(&rogue_file, &serde_yaml::to_string(&rogue).unwrap());

    let a_gw = set.cluster("a").gateway();
    let mentions = |log: &str, words: &[&str]| {
        log.lines().any(|l| {
            let l = l.to_lowercase();
            words.iter().all(|w| l.contains(&w.to_lowercase()))
        })
    };
    wait_until(
        "a's log to report the malformed file",
        Duration::from_secs(15),
        || mentions(&a_gw.log(), &[garbage.trim_end_matches(".yaml")]),
    );
    wait_until(
        "a's log to report the rogue Endpoint's overlap",
        Duration::from_secs(15),
        || mentions(&a_gw.log(), &["rogue", "overlap"]),
    );
    for line in a_gw
        .log()
        .lines()
        .filter(|l| l.contains("rogue") || l.contains(garbage.trim_end_matches(".yaml")))
        .take(4)
    {
        eprintln!("a's log: {line}");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let counted = loop {
        let counted = parse_metrics(&a_gw.metrics())
            .iter()
            .any(|s| s.name == "strait_broker_objects_skipped" && s.value > 0.0);
        if counted || Instant::now() > deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let metrics = a_gw.metrics();
    let skipped: Vec<&str> = metrics.lines().filter(|l| l.contains("skipped")).collect();
    assert!(
        counted,
        "no strait_broker_objects_skipped > 0 on a after 15 s; its metrics \
         mentioning 'skipped':\n{}",
        skipped.join("\n")
    );
    for c in broker
        .connections("a")
        .iter()
        .filter(|c| c.remote_cluster == "rogue")
    {
        assert_eq!(c.status, "error", "a's connection to rogue: {:?}", c.raw);
        assert!(
            c.message.to_lowercase().contains("overlap"),
            "a's connection to rogue says {:?}",
            c.message
        );
    }
    assert!(
        a_gw.routes_into(&rogue_subnet).is_empty(),
        "a routes the rogue's subnet {rogue_subnet}:\n{}",
        a_gw.routes()
    );

    // Existing tunnels unaffected, nobody crashed, nothing deleted.
    let (a, b) = (set.cluster("a").pod(0), set.cluster("b").pod(0));
    assert!(a.ping(b) && b.ping(a), "a <-> b with the bad files present");
    tcp_ok(a, b);
    for id in ["a", "b"] {
        let gw = set.cluster_mut(id).gateway_mut();
        assert!(gw.agent_running(), "{id}'s agent exited:\n{}", gw.log());
    }
    assert!(broker.path.join("endpoints").join(&garbage).exists());
    assert!(broker.path.join(&rogue_file).exists());
    // The health checker reports the connection within a few probes.
    wait_until(
        "a's connection to b to be reported connected",
        Duration::from_secs(10),
        || {
            broker
                .connections("a")
                .into_iter()
                .any(|c| c.remote_cluster == "b" && c.status == "connected")
        },
    );
}

#[test]
fn metrics_show_connections_connected_with_latency() {
    let set = clusters(&["a", "b"]);
    for (id, remote) in [("a", "b"), ("b", "a")] {
        let gw = set.cluster(id).gateway();
        wait_until(
            &format!("{id}'s metrics to show {remote} connected with a latency"),
            Duration::from_secs(20),
            || {
                let connected = remote_samples(gw, "submariner_connections", remote)
                    .iter()
                    .any(|s| s.label("status") == Some("connected") && s.value == 1.0);
                let latency = remote_samples(gw, "submariner_connection_latency_seconds", remote)
                    .iter()
                    .any(|s| s.value > 0.0 && s.value.is_finite());
                connected && latency
            },
        );
        let metrics = gw.metrics();
        for line in metrics.lines().filter(|l| {
            l.starts_with("submariner_connection") || l.starts_with("submariner_gateway")
        }) {
            eprintln!("{id}: {line}");
        }
        let samples = parse_metrics(&metrics);
        let connected = samples
            .iter()
            .find(|s| {
                s.name == "submariner_connections" && s.label("remote_cluster") == Some(remote)
            })
            .unwrap();
        assert_eq!(connected.label("local_cluster"), Some(id), "{connected:?}");
        assert_eq!(
            connected.label("cable_driver"),
            Some("wireguard"),
            "{connected:?}"
        );
        for label in [
            "local_hostname",
            "local_endpoint_ip",
            "remote_hostname",
            "remote_endpoint_ip",
        ] {
            assert!(
                connected.label(label).is_some(),
                "no {label}: {connected:?}"
            );
        }
        for name in [
            "submariner_gateway_rx_bytes",
            "submariner_gateway_tx_bytes",
            "submariner_gateway_sync_iterations",
        ] {
            assert!(
                samples.iter().any(|s| s.name == name),
                "no {name} on {id}:\n{metrics}"
            );
        }
    }
    // Traffic moves the byte counters.
    let (a, b) = (set.cluster("a").pod(0), set.cluster("b").pod(0));
    let gw = set.cluster("a").gateway();
    let rx = |gw: &Node| -> f64 {
        remote_samples(gw, "submariner_gateway_rx_bytes", "b")
            .iter()
            .map(|s| s.value)
            .sum()
    };
    let before = rx(gw);
    tcp_ok(b, a);
    wait_until(
        "a's rx bytes from b to grow",
        Duration::from_secs(10),
        || rx(gw) >= before + TCP_BYTES as f64,
    );
}

/// Ticks of CPU (user + system) a process has used, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn connected_agents_idle_quietly() {
    let set = clusters(&["a", "b"]);
    set.wait_connected(Duration::from_secs(20));
    let gw = set.cluster("a").gateway();
    let pid = gw.agent_pid().unwrap();
    let iterations = || -> f64 {
        parse_metrics(&gw.metrics())
            .iter()
            .find(|s| s.name == "submariner_gateway_sync_iterations")
            .map(|s| s.value)
            .unwrap_or(f64::NAN)
    };
    // A measuring window, not a wait for something to happen.
    let window = Duration::from_secs(5);
    let (syncs, ticks) = (iterations(), cpu_ticks(pid));
    std::thread::sleep(window);
    let syncs = (iterations() - syncs) / window.as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (cpu_ticks(pid) - ticks) as f64 / hz / window.as_secs_f64();
    eprintln!(
        "IDLE: a's agent with one connection: {syncs:.1} sync iterations/s, {:.1} % of a CPU",
        cpu * 100.0
    );
    assert!(
        syncs < 50.0,
        "{syncs:.1} sync iterations per second while idle"
    );
    assert!(cpu < 0.10, "{:.1} % CPU while idle", cpu * 100.0);
}
