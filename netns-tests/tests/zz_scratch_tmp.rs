use std::time::{Duration, Instant};
use strait_netns_tests::{ClusterSet, ClusterSpec, NodeSpec, Options};

fn three(id: &str, k: u8) -> ClusterSpec {
    ClusterSpec::new(id, k, vec![NodeSpec::gateway(&format!("{id}-gw"), 1), NodeSpec::worker(&format!("{id}-w1"), 1), NodeSpec::worker(&format!("{id}-w2"), 1)])
}

#[test]
fn scratch() {
    let set = ClusterSet::build(&[three("a", 1), three("b", 2)], Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo")));
    set.wait_connected(Duration::from_secs(30));
    let p = &set.cluster("a").node("a-w1").pods[0];
    let q = &set.cluster("b").node("b-w1").pods[0];
    strait_netns_tests::wait_until("reach", Duration::from_secs(30), || p.ping_once(q.ip, 1));
    let args = p.tcp_request_args(q, 48 << 20, &["--rate", &(4u64 << 20).to_string(), "--timeout", "90"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let mut tr = p.ns.spawn(&args, &[], &set.root().join("t.log"));
    while !tr.exited() {
        let out = p.ns.exec(&["ss", "-tni", "dst", &q.ip.to_string()]);
        let s = String::from_utf8_lossy(&out.stdout);
        let acked: Vec<&str> = s.split_whitespace().filter(|f| f.starts_with("bytes_acked") || f.starts_with("bytes_received")).collect();
        eprintln!("{:.1?} {:?}", t.elapsed(), acked);
        std::thread::sleep(Duration::from_millis(1000));
    }
    eprintln!("{}", tr.log());
    // MSS sensitivity: undo the clamp on all four nodes, drop frag-needed in pods.
    let (r, s) = (&set.cluster("a").node("a-w2").pods[0], &set.cluster("b").node("b-w2").pods[0]);
    for pod in [r, s] {
        pod.ok(&["nft", "add table inet drop-pmtu\nadd chain inet drop-pmtu input { type filter hook input priority 0; }\nadd rule inet drop-pmtu input icmp type destination-unreachable icmp code frag-needed counter drop"]);
    }
    for (c, n) in [("a", "a-w2"), ("a", "a-gw"), ("b", "b-gw"), ("b", "b-w2")] {
        set.cluster(c).node(n).ok(&["nft", "add table inet unclamp\nadd chain inet unclamp forward { type filter hook forward priority 10; }\nadd rule inet unclamp forward tcp flags syn / syn,rst counter tcp option maxseg size set 1460"]);
    }
    let res = r.tcp_request_with(s, 8 << 20, &["--timeout", "15"]);
    eprintln!("UNCLAMPED: {res:?}");
    for pod in [r, s] { eprintln!("{}", pod.ok(&["nft", "list", "table", "inet", "drop-pmtu"])); }
}
