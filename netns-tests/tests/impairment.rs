//! `strait tunnel` over a lossy, reordering network: TCP through the tunnel
//! still delivers a file byte for byte. The network is a router namespace
//! between the two ends (192.0.2.0/24 and 198.51.100.0/24) whose nftables
//! drop a random share of the tunnel's datagrams and send another share
//! through a narrow HTB class, whose queue makes them arrive after
//! datagrams sent later: reordering without netem, which this kernel lacks.

use std::time::Duration;

use strait_netns_tests::wg::{self, Implementation, TunnelEnd};
use strait_netns_tests::{require_root, unique_id, veth, wait_until, Netns, Scratch};

const A_OUTER: &str = "192.0.2.1";
const B_OUTER: &str = "198.51.100.2";
const A_PORT: u16 = 51820;
const B_PORT: u16 = 51821;
const B_INNER: &str = "10.9.0.2";
const FILE_PORT: u16 = 5201;
/// Several MB: thousands of datagrams, so every impairment happens often.
const FILE_BYTES: usize = 8 << 20;
/// Percent of the tunnel's datagrams dropped, and delayed, each way.
const DROP_PERCENT: u32 = 2;
const DELAY_PERCENT: u32 = 5;

/// Deterministic content: a failed run can be repeated.
fn file_content(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Routes between the router's two links, dropping and delaying the
/// tunnel's datagrams in both directions. Delayed datagrams go to HTB
/// class 1:20 of the outgoing link (nftables picks the class through the
/// packet priority), a narrow one whose queue makes them late.
fn impair(router: &Netns, links: [&str; 2]) {
    router.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for link in links {
        router.ok(&[
            "tc", "qdisc", "add", "dev", link, "root", "handle", "1:", "htb", "default", "10",
        ]);
        for (class, rate) in [("1:10", "10gbit"), ("1:20", "20mbit")] {
            router.ok(&[
                "tc", "class", "add", "dev", link, "parent", "1:", "classid", class, "htb", "rate",
                rate,
            ]);
        }
    }
    let tunnel = format!("udp dport {{ {A_PORT}, {B_PORT} }}");
    let ruleset = format!(
        "table inet impair {{
            chain forward {{
                type filter hook forward priority 0; policy accept;
                {tunnel} numgen random mod 100 < {DROP_PERCENT} counter drop
                {tunnel} numgen random mod 100 < {DELAY_PERCENT} counter meta priority set 1:20
            }}
        }}"
    );
    let mut nft = router
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("starting nft");
    use std::io::Write;
    nft.stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success(), "nft refused:\n{ruleset}");
}

/// Packets the router's rules dropped and delayed, from their counters.
fn impaired_packets(router: &Netns) -> (u64, u64) {
    let listing = router.ok(&["nft", "list", "chain", "inet", "impair", "forward"]);
    let counts: Vec<u64> = listing
        .split("counter packets ")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{listing}");
    (counts[0], counts[1])
}

fn sha256(ns: &Netns, path: &str) -> String {
    let out = ns.ok(&["sha256sum", path]);
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn tcp_through_the_tunnel_survives_loss_and_reordering() {
    require_root();
    let scratch = Scratch::new("impair");
    let a = Netns::new("la");
    let router = Netns::new("lr");
    let b = Netns::new("lb");
    veth(
        &a,
        "wan",
        &format!("{A_OUTER}/24"),
        &router,
        "ra",
        "192.0.2.254/24",
    );
    veth(
        &router,
        "rb",
        "198.51.100.254/24",
        &b,
        "wan",
        &format!("{B_OUTER}/24"),
    );
    a.ok(&["ip", "route", "add", "default", "via", "192.0.2.254"]);
    b.ok(&["ip", "route", "add", "default", "via", "198.51.100.254"]);
    // The senders' links split UDP GSO batches, so the router drops and
    // delays single datagrams; the receivers' links coalesce what arrives
    // (GRO), so the tunnel also reassembles around the gaps.
    for ns in [&a, &b] {
        ns.ok(&["ip", "link", "set", "wan", "gso_max_segs", "1"]);
        ns.ok(&["ethtool", "-K", "wan", "gro", "on"]);
    }
    impair(&router, ["ra", "rb"]);

    let id = unique_id();
    let (a_if, b_if) = (format!("sta{id}"), format!("stb{id}"));
    let a_keys = wg::key_pair(&scratch, "a");
    let b_keys = wg::key_pair(&scratch, "b");
    let _a_dev = wg::start(&a, Implementation::Strait, &a_if, &scratch.path("a.log"));
    let _b_dev = wg::start(&b, Implementation::Strait, &b_if, &scratch.path("b.log"));
    let ends = [
        (
            &a,
            &a_if,
            &a_keys,
            A_PORT,
            "10.9.0.1/24",
            &b_keys,
            B_OUTER,
            B_PORT,
            "10.9.0.2/32",
        ),
        (
            &b,
            &b_if,
            &b_keys,
            B_PORT,
            "10.9.0.2/24",
            &a_keys,
            A_OUTER,
            A_PORT,
            "10.9.0.1/32",
        ),
    ];
    for (ns, ifname, keys, port, address, peer, peer_ip, peer_port, allowed) in ends {
        wg::configure(
            &TunnelEnd {
                ns,
                ifname,
                keys,
                listen_port: port,
                addresses: &[address],
            },
            peer,
            &format!("{peer_ip}:{peer_port}"),
            allowed,
        );
        ns.ok(&["ip", "link", "set", ifname, "mtu", "1420"]);
    }
    // Pings may be lost too: five out of ten are enough to know it is up.
    wait_until("the tunnel to pass pings", Duration::from_secs(20), || {
        let out = a.exec(&[
            "ping", "-n", "-q", "-c", "10", "-i", "0.05", "-W", "1", B_INNER,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(" received")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 5)
    });

    let sent = scratch.path("sent.bin");
    let received = scratch.path("received.bin");
    std::fs::write(&sent, file_content(FILE_BYTES)).expect("writing the file to send");
    let (sent, received) = (sent.to_string_lossy(), received.to_string_lossy());
    let tool = env!("CARGO_BIN_EXE_tcp-file");
    let target = format!("{B_INNER}:{FILE_PORT}");
    let mut receiver = b.spawn(
        &[tool, "receive", &target, &received],
        &[],
        &scratch.path("receiver.log"),
    );
    wait_until("the receiver to listen", Duration::from_secs(10), || {
        receiver.log().contains("listening")
    });
    let send = a.exec(&["timeout", "90", tool, "send", &target, &sent]);
    assert!(
        send.status.success(),
        "sending failed: {}{}",
        String::from_utf8_lossy(&send.stdout),
        String::from_utf8_lossy(&send.stderr)
    );
    wait_until("the receiver to finish", Duration::from_secs(30), || {
        receiver.exited()
    });
    assert!(
        receiver.log().contains(&format!("received={FILE_BYTES}")),
        "{}",
        receiver.log()
    );
    assert_eq!(sha256(&b, &received), sha256(&a, &sent));

    let (dropped, delayed) = impaired_packets(&router);
    assert!(
        dropped > 0 && delayed > 0,
        "the network did not impair the transfer: {dropped} dropped, {delayed} delayed"
    );
}
