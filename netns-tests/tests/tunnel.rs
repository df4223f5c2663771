//! `strait tunnel` against real WireGuard peers, configured only through
//! wg(8), in network namespaces joined by a veth pair (192.0.2.0/24).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use strait_netns_tests::wg::{self, Implementation, KeyPair, TunnelEnd};
use strait_netns_tests::{require_root, unique_id, veth, wait_until, Netns, Process, Scratch};

const A_OUTER: &str = "192.0.2.1";
const B_OUTER: &str = "192.0.2.2";
const A_INNER: &str = "10.9.0.1";
const B_INNER: &str = "10.9.0.2";
const A_INNER6: &str = "2001:db8:9::1";
const B_INNER6: &str = "2001:db8:9::2";
const A_PORT: u16 = 51820;
const B_PORT: u16 = 51821;

/// Two namespaces, a device in each, keys, and everything torn down on drop.
struct Pair {
    a: Netns,
    b: Netns,
    a_if: String,
    b_if: String,
    a_keys: KeyPair,
    b_keys: KeyPair,
    a_dev: Process,
    b_dev: Process,
    scratch: Scratch,
}

impl Pair {
    fn new(a_impl: Implementation, b_impl: Implementation) -> Pair {
        require_root();
        let scratch = Scratch::new("tunnel");
        let a = Netns::new("a");
        let b = Netns::new("b");
        let id = unique_id();
        veth(
            &a,
            "wan",
            &format!("{A_OUTER}/24"),
            &b,
            "wan",
            &format!("{B_OUTER}/24"),
        );
        let a_if = format!("sta{id}");
        let b_if = format!("stb{id}");
        let a_keys = wg::key_pair(&scratch, "a");
        let b_keys = wg::key_pair(&scratch, "b");
        let a_dev = wg::start(&a, a_impl, &a_if, &scratch.path("a.log"));
        let b_dev = wg::start(&b, b_impl, &b_if, &scratch.path("b.log"));
        let pair = Pair {
            a,
            b,
            a_if,
            b_if,
            a_keys,
            b_keys,
            a_dev,
            b_dev,
            scratch,
        };
        pair.configure_a();
        pair.configure_b(B_PORT);
        pair
    }

    fn configure_a(&self) {
        wg::configure(
            &TunnelEnd {
                ns: &self.a,
                ifname: &self.a_if,
                keys: &self.a_keys,
                listen_port: A_PORT,
                addresses: &["10.9.0.1/24", "2001:db8:9::1/64"],
            },
            &self.b_keys,
            &format!("{B_OUTER}:{B_PORT}"),
            &format!("{B_INNER}/32,{B_INNER6}/128"),
        );
    }

    fn configure_b(&self, port: u16) {
        wg::configure(
            &TunnelEnd {
                ns: &self.b,
                ifname: &self.b_if,
                keys: &self.b_keys,
                listen_port: port,
                addresses: &["10.9.0.2/24", "2001:db8:9::2/64"],
            },
            &self.a_keys,
            &format!("{A_OUTER}:{A_PORT}"),
            &format!("{A_INNER}/32,{A_INNER6}/128"),
        );
    }

    fn pings_both_ways(&self) {
        assert!(
            self.a.ping_all(B_INNER, 3, 10),
            "A cannot ping B through the tunnel"
        );
        assert!(
            self.b.ping_all(A_INNER, 3, 10),
            "B cannot ping A through the tunnel"
        );
    }

    fn a_peer(&self) -> wg::PeerDump {
        let dump = wg::dump(&self.a, &self.a_if);
        assert_eq!(dump.listen_port, A_PORT);
        assert_eq!(dump.peers.len(), 1, "{dump:?}");
        dump.peers[0].clone()
    }

    /// Stops A's strait device and returns the counters it logged.
    fn stop_a(&mut self) -> String {
        let (clean, log) = self.a_dev.terminate();
        assert!(clean, "strait did not exit cleanly on SIGTERM:\n{log}");
        log
    }
}

/// A number field from strait's JSON "device stopped" log line.
fn logged_counter(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("device stopped"))
        .unwrap_or_else(|| panic!("no 'device stopped' line in:\n{log}"));
    let key = format!("\"{field}\":");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        + key.len();
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn strait_and_wireguard_go_interoperate() {
    let mut pair = Pair::new(Implementation::Strait, Implementation::WireguardGo);
    pair.pings_both_ways();
    assert!(pair.a.ping_all(B_INNER6, 3, 10), "IPv6 inside the tunnel");

    let peer = pair.a_peer();
    assert_eq!(peer.public_key, pair.b_keys.public);
    assert_eq!(peer.endpoint, format!("{B_OUTER}:{B_PORT}"));
    assert!(peer.latest_handshake > 0, "no handshake reported: {peer:?}");
    assert!(
        peer.rx_bytes > 0 && peer.tx_bytes > 0,
        "no transfer reported: {peer:?}"
    );

    // The peer restarts on a new port: it reaches us first, we follow it.
    pair.b_dev.terminate();
    wait_until(
        "wireguard-go's interface to go",
        Duration::from_secs(5),
        || !pair.b.has_link(&pair.b_if),
    );
    pair.b_dev = wg::start(
        &pair.b,
        Implementation::WireguardGo,
        &pair.b_if,
        &pair.scratch.path("b2.log"),
    );
    let new_port = B_PORT + 10;
    pair.configure_b(new_port);
    assert!(
        pair.b.ping_all(A_INNER, 3, 10),
        "B cannot reach A after its restart"
    );
    assert!(
        pair.a.ping_all(B_INNER, 3, 10),
        "A cannot reach B after its restart"
    );
    assert_eq!(pair.a_peer().endpoint, format!("{B_OUTER}:{new_port}"));

    // Garbage and replays on our listen port are dropped and counted.
    let capture_file = pair.scratch.path("wan.pcap");
    let capture = pair.a.spawn(
        &[
            "tcpdump",
            "-i",
            "wan",
            "-U",
            "-n",
            "-c",
            "6",
            "-w",
            &capture_file.to_string_lossy(),
            &format!("udp and src port {new_port}"),
        ],
        &[],
        &pair.scratch.path("tcpdump.log"),
    );
    wait_until("tcpdump to listen", Duration::from_secs(10), || {
        capture.log().contains("listening on")
    });
    assert!(pair.b.ping_all(A_INNER, 8, 10));
    let mut capture = capture;
    wait_until(
        "tcpdump to capture the pings",
        Duration::from_secs(10),
        || capture.exited(),
    );

    let blast = env!("CARGO_BIN_EXE_udp-blast");
    let target = format!("{A_OUTER}:{A_PORT}");
    let garbage = pair.b.ok(&[blast, "garbage", &target, "2000"]);
    let replay = pair.b.ok(&[
        blast,
        "replay",
        &target,
        &capture_file.to_string_lossy(),
        &new_port.to_string(),
    ]);
    let replayed: u64 = replay
        .trim()
        .trim_start_matches("replayed=")
        .parse()
        .unwrap();
    assert!(
        replayed >= 3,
        "the capture held too few data messages: {replay}"
    );

    pair.pings_both_ways();
    assert_eq!(
        pair.a_peer().endpoint,
        format!("{B_OUTER}:{new_port}"),
        "a replayed or forged datagram moved the peer's endpoint"
    );

    let log = pair.stop_a();
    let invalid: u64 = garbage
        .split_whitespace()
        .find_map(|f| f.strip_prefix("invalid="))
        .unwrap()
        .parse()
        .unwrap();
    let malformed: u64 = garbage
        .split_whitespace()
        .find_map(|f| f.strip_prefix("malformed="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(logged_counter(&log, "invalid_datagrams"), invalid);
    assert!(
        logged_counter(&log, "rejected_datagrams") >= malformed + replayed,
        "forged and replayed messages were not all rejected:\n{log}"
    );
}

#[test]
fn strait_to_strait() {
    let mut pair = Pair::new(Implementation::Strait, Implementation::Strait);
    pair.pings_both_ways();
    assert!(pair.b.ping_all(A_INNER6, 3, 10), "IPv6 inside the tunnel");
    let peer = pair.a_peer();
    assert!(
        peer.latest_handshake > 0 && peer.rx_bytes > 0 && peer.tx_bytes > 0,
        "{peer:?}"
    );

    // A packet from B with a source outside B's allowed IPs is dropped.
    pair.b
        .ok(&["ip", "addr", "add", "10.9.0.77/24", "dev", &pair.b_if]);
    assert!(
        !pair.b.ping_all_from(A_INNER, "10.9.0.77"),
        "spoofed source got through"
    );
    pair.stop_a();
}

#[test]
fn a_handshake_flood_gets_cookie_replies_and_the_tunnel_survives() {
    let mut pair = Pair::new(Implementation::Strait, Implementation::Strait);
    pair.pings_both_ways();
    let blast = env!("CARGO_BIN_EXE_udp-blast");
    let target = format!("{A_OUTER}:{A_PORT}");
    let a_public = wg::dump_public_key(&pair.a, &pair.a_if);
    let out = pair
        .b
        .ok(&[blast, "handshake-flood", &target, &a_public, "3000"]);
    let cookies: u64 = out
        .split_whitespace()
        .find_map(|f| f.strip_prefix("cookies="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        cookies > 0,
        "no cookie reply under a flood of initiations: {out}"
    );
    pair.pings_both_ways();
    let log = pair.stop_a();
    assert!(logged_counter(&log, "cookies_sent") >= cookies, "{log}");
}

#[test]
fn malformed_uapi_requests_get_an_errno_and_change_nothing() {
    let pair = Pair::new(Implementation::Strait, Implementation::Strait);
    pair.pings_both_ways();
    let socket = format!("/var/run/wireguard/{}.sock", pair.a_if);
    for request in [
        "set=1\nbogus_key=1\n\n",
        "set=1\nlisten_port=notaport\n\n",
        "set=1\npublic_key=zz\n\n",
        "set=1\nendpoint=192.0.2.9:1\n\n",
        "frobnicate=1\n\n",
        "set=1\nprivate_key=00\n",
    ] {
        let mut stream = UnixStream::connect(&socket).expect("connecting to the UAPI socket");
        stream.write_all(request.as_bytes()).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with("errno=-") && reply.ends_with("\n\n"),
            "{request:?} got {reply:?}"
        );
    }
    // A port another device holds: refused with the errno, the old port
    // and the tunnel stay.
    let other_if = format!("stc{}", unique_id());
    let _other = wg::start(
        &pair.a,
        Implementation::Strait,
        &other_if,
        &pair.scratch.path("c.log"),
    );
    pair.a.ok(&["wg", "set", &other_if, "listen-port", "51900"]);
    let out = pair
        .a
        .exec(&["wg", "set", &pair.a_if, "listen-port", "51900"]);
    assert!(!out.status.success(), "a port in use was accepted");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Address already in use"), "wg said: {said}");
    assert_eq!(wg::dump(&pair.a, &pair.a_if).listen_port, A_PORT);
    pair.pings_both_ways();
}

#[test]
fn refuses_bad_names_and_missing_privileges_with_one_line() {
    require_root();
    let bin = strait_netns_tests::strait_bin();
    let bin = bin.to_string_lossy();
    let ns = Netns::new("err");
    let cases: [(&[&str], &str); 3] = [
        (
            &[&bin, "tunnel", "a-name-longer-than-fifteen", "-f"],
            "not valid",
        ),
        (
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &bin,
                "tunnel",
                "stnopriv",
                "-f",
            ],
            "CAP_NET_ADMIN",
        ),
        (
            &[
                "unshare",
                "-m",
                "sh",
                "-c",
                &format!("mount -t tmpfs none /dev/net && exec {bin} tunnel stnotun -f"),
            ],
            "/dev/net/tun is missing",
        ),
    ];
    for (args, expected) in cases {
        let out = ns.exec(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("strait: "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?} printed: {stderr}");
        assert!(errors[0].contains(expected), "{args:?} printed: {stderr}");
    }
}

#[test]
fn detaches_and_exits_when_its_interface_is_deleted() {
    require_root();
    let ns = Netns::new("det");
    let ifname = format!("std{}", unique_id());
    let bin = strait_netns_tests::strait_bin();
    let out = ns.exec(&[&bin.to_string_lossy(), "tunnel", &ifname]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Detached means the device answers after the command returned.
    ns.ok(&["wg", "show", &ifname]);
    let socket = format!("/var/run/wireguard/{ifname}.sock");
    assert!(std::path::Path::new(&socket).exists());
    ns.ok(&["ip", "link", "del", &ifname]);
    wait_until(
        "the detached device to remove its socket",
        Duration::from_secs(5),
        || !std::path::Path::new(&socket).exists(),
    );
}
