//! Strait's nftables table (`inet strait`, src/net/nft.rs) in network
//! namespaces: a client `c` (local cluster, 192.0.2.0/24 and
//! 2001:db8:1::/64) routed by `r` to a server `s` (remote cluster,
//! 198.51.100.0/24 and 2001:db8:2::/64). `r` also holds a CNI-like table
//! that masquerades everything it forwards.
//!
//! The table is applied by `strait::net::nft` itself, from a thread that
//! entered the router's namespace (`nft` runs as its child, there).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use strait::net::nft::{self, NftPlan, NftTable};
use strait_netns_tests::{require_root, veth, Netns};

const C4: &str = "192.0.2.2";
const R_C4: &str = "192.0.2.1";
const S4: &str = "198.51.100.2";
const R_S4: &str = "198.51.100.1";
const C6: &str = "2001:db8:1::2";
const R_C6: &str = "2001:db8:1::1";
const S6: &str = "2001:db8:2::2";
const R_S6: &str = "2001:db8:2::1";

/// A CNI-like table in the router: masquerade every forwarded packet, at
/// the usual srcnat priority.
const MASQUERADE: &str = "table inet cni {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        counter masquerade
    }
}
";

fn plan(mss: Option<u16>) -> NftPlan {
    NftPlan {
        local_subnets: vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8:1::/64".parse().unwrap(),
        ],
        remote_subnets: vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:2::/64".parse().unwrap(),
        ],
        mss,
        globalnet: None,
    }
}

/// c — r — s, forwarding on in r, no tables yet.
struct Net {
    c: Netns,
    r: Netns,
    s: Netns,
}

impl Net {
    fn new() -> Net {
        require_root();
        let c = Netns::new("nft-c");
        let r = Netns::new("nft-r");
        let s = Netns::new("nft-s");
        veth(
            &c,
            "lan",
            &format!("{C4}/24"),
            &r,
            "lan",
            &format!("{R_C4}/24"),
        );
        veth(
            &r,
            "wan",
            &format!("{R_S4}/24"),
            &s,
            "wan",
            &format!("{S4}/24"),
        );
        for (ns, ifname, addr) in [
            (&c, "lan", C6),
            (&r, "lan", R_C6),
            (&r, "wan", R_S6),
            (&s, "wan", S6),
        ] {
            ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
        }
        c.ok(&["ip", "route", "add", "default", "via", R_C4]);
        c.ok(&["ip", "-6", "route", "add", "default", "via", R_C6]);
        s.ok(&["ip", "route", "add", "default", "via", R_S4]);
        s.ok(&["ip", "-6", "route", "add", "default", "via", R_S6]);
        r.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        r.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Net { c, r, s }
    }

    fn ensure(&self, table: &mut NftTable, plan: &NftPlan) -> bool {
        self.r.run_inside(|| table.ensure(plan)).expect("ensure")
    }

    fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.r.run_inside(nft::counters).expect("counters")
    }

    /// Listing of the strait table in r, counters left out.
    fn listing(&self) -> String {
        self.r.ok(&["nft", "-s", "list", "table", "inet", "strait"])
    }
}

/// The source address `to_ns` sees on a UDP datagram sent by `from_ns` to
/// `to` (a new socket, so a new conntrack entry, every call).
fn udp_source(from_ns: &Netns, to_ns: &Netns, to: &str) -> IpAddr {
    let to: IpAddr = to.parse().unwrap();
    let server = to_ns.run_inside(|| UdpSocket::bind(SocketAddr::new(to, 0)).expect("bind"));
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let target = server.local_addr().unwrap();
    let any: IpAddr = if to.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let client = from_ns.run_inside(|| UdpSocket::bind(SocketAddr::new(any, 0)).expect("bind"));
    client.send_to(b"strait", target).expect("send");
    let mut buf = [0u8; 16];
    let (n, peer) = server.recv_from(&mut buf).expect("no datagram arrived");
    assert_eq!(&buf[..n], b"strait");
    peer.ip()
}

fn tcp_maxseg(stream: &TcpStream) -> u32 {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point to live locals of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value as u32
}

/// Connects from c to s over TCP, exchanges a few bytes; returns the MSS
/// each end sends with (client, server).
fn tcp_mss(net: &Net, to: &str) -> (u32, u32) {
    let to: IpAddr = to.parse().unwrap();
    let listener = net
        .s
        .run_inside(|| TcpListener::bind(SocketAddr::new(to, 0)).expect("bind"));
    let target = listener.local_addr().unwrap();
    let client = net.c.run_inside(|| {
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect")
    });
    let (mut server, _) = listener.accept().expect("accept");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (&client).write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    server.write_all(b"pong").unwrap();
    (&client).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    (tcp_maxseg(&client), tcp_maxseg(&server))
}

#[test]
fn identity_snat_keeps_cross_cluster_sources_from_masquerade() {
    let net = Net::new();
    net.r.nft(MASQUERADE);

    // Without Strait's table the CNI's masquerade rewrites the source.
    let c4: IpAddr = C4.parse().unwrap();
    let c6: IpAddr = C6.parse().unwrap();
    let s4: IpAddr = S4.parse().unwrap();
    assert_eq!(
        udp_source(&net.c, &net.s, S4),
        R_S4.parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        udp_source(&net.c, &net.s, S6),
        R_S6.parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        udp_source(&net.s, &net.c, C4),
        R_C4.parse::<IpAddr>().unwrap()
    );

    let mut table = NftTable::new();
    assert!(net.ensure(&mut table, &plan(None)));

    // With it, both directions and both families keep their sources.
    assert_eq!(udp_source(&net.c, &net.s, S4), c4);
    assert_eq!(udp_source(&net.c, &net.s, S6), c6);
    assert_eq!(udp_source(&net.s, &net.c, C4), s4);
    assert_eq!(
        udp_source(&net.s, &net.c, C6),
        S6.parse::<IpAddr>().unwrap()
    );

    let counts = net.counters();
    for rule in [
        nft::rule::NO_MASQUERADE_LOCAL_TO_REMOTE_4,
        nft::rule::NO_MASQUERADE_LOCAL_TO_REMOTE_6,
        nft::rule::NO_MASQUERADE_REMOTE_TO_LOCAL_4,
        nft::rule::NO_MASQUERADE_REMOTE_TO_LOCAL_6,
        nft::rule::ACCEPT_TO_REMOTE_4,
        nft::rule::ACCEPT_FROM_REMOTE_4,
        nft::rule::ACCEPT_TO_REMOTE_6,
        nft::rule::ACCEPT_FROM_REMOTE_6,
    ] {
        assert!(
            counts[rule] >= 1,
            "rule {rule:?} matched nothing: {counts:?}"
        );
    }
}

#[test]
fn mss_is_clamped_both_ways() {
    let net = Net::new();
    // MTU 1500 everywhere: 1448 with timestamps, unless clamped.
    let (client, server) = tcp_mss(&net, S4);
    assert!(client > 1400 && server > 1400, "{client} {server}");

    let mut table = NftTable::new();
    assert!(net.ensure(&mut table, &plan(Some(1200))));
    for to in [S4, S6] {
        let (client, server) = tcp_mss(&net, to);
        assert!(
            client <= 1200,
            "client sends {client}-byte segments to {to}"
        );
        assert!(
            server <= 1200,
            "server sends {server}-byte segments from {to}"
        );
    }
    let counts = net.counters();
    for rule in [
        nft::rule::MSS_FORWARD_TO_REMOTE_4,
        nft::rule::MSS_FORWARD_FROM_REMOTE_4,
        nft::rule::MSS_FORWARD_TO_REMOTE_6,
        nft::rule::MSS_FORWARD_FROM_REMOTE_6,
    ] {
        assert!(
            counts[rule] >= 1,
            "rule {rule:?} matched nothing: {counts:?}"
        );
    }

    // To the route's MTU: a 1300-byte link from r to s.
    net.r.ok(&["ip", "link", "set", "wan", "mtu", "1300"]);
    net.s.ok(&["ip", "link", "set", "wan", "mtu", "1300"]);
    assert!(net.ensure(&mut table, &plan(None)));
    let (client, _) = tcp_mss(&net, S4);
    assert!(client <= 1260, "client sends {client}-byte segments");

    // Host-network traffic of r itself, through the output chain.
    let before = net.counters()[nft::rule::MSS_OUTPUT_TO_REMOTE_4];
    let listener = net.s.run_inside(|| TcpListener::bind((S4, 0)).unwrap());
    let target = listener.local_addr().unwrap();
    let host = net.r.run_inside(|| {
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect")
    });
    let (server, _) = listener.accept().unwrap();
    assert!(tcp_maxseg(&server) <= 1260);
    drop(host);
    assert!(net.counters()[nft::rule::MSS_OUTPUT_TO_REMOTE_4] > before);
}

#[test]
fn unchanged_plan_writes_nothing_and_a_restart_adopts() {
    let net = Net::new();
    let mut table = NftTable::new();
    let p = plan(None);
    assert!(
        net.ensure(&mut table, &p),
        "the first ensure creates the table"
    );
    let listing = net.listing();
    assert!(!net.ensure(&mut table, &p), "the same plan again wrote");
    assert!(!net.ensure(&mut table, &p));
    // Traffic moves the counters, which is no change.
    udp_source(&net.c, &net.s, S4);
    assert!(!net.ensure(&mut table, &p));

    // A restarted agent adopts what is there without writing: the kernel's
    // listing is exactly the rendering.
    let mut restarted = NftTable::new();
    assert!(
        !net.ensure(&mut restarted, &p),
        "a restart rewrote the table"
    );
    assert_eq!(net.listing(), listing);
    let with_handles = net.r.ok(&["nft", "-a", "list", "table", "inet", "strait"]);
    assert!(!net.ensure(&mut restarted, &p));
    assert_eq!(
        net.r.ok(&["nft", "-a", "list", "table", "inet", "strait"]),
        with_handles,
        "the table was re-created"
    );

    // A changed plan is applied, once.
    let mut changed = p.clone();
    changed
        .remote_subnets
        .push("203.0.113.0/24".parse().unwrap());
    assert!(net.ensure(&mut restarted, &changed));
    assert!(net.listing().contains("203.0.113.0/24"));
    assert!(!net.ensure(&mut restarted, &changed));

    // Removal, for `strait uninstall`.
    assert!(net.r.run_inside(NftTable::remove).unwrap());
    assert!(!net.r.run_inside(NftTable::remove).unwrap());
    assert!(!net
        .r
        .exec(&["nft", "list", "table", "inet", "strait"])
        .status
        .success());
    assert!(!net.r.ok(&["nft", "list", "ruleset"]).contains("strait"));
}

#[test]
fn tampering_is_repaired() {
    let net = Net::new();
    net.r.nft(MASQUERADE);
    let mut table = NftTable::new();
    let p = plan(None);
    assert!(net.ensure(&mut table, &p));
    let listing = net.listing();

    // Flushed by hand: every rule gone, sets and chains left.
    net.r.ok(&["nft", "flush", "table", "inet", "strait"]);
    assert_eq!(
        udp_source(&net.c, &net.s, S4),
        R_S4.parse::<IpAddr>().unwrap()
    );
    assert!(
        net.ensure(&mut table, &p),
        "a flushed table was not restored"
    );
    assert_eq!(net.listing(), listing);
    assert_eq!(
        udp_source(&net.c, &net.s, S4),
        C4.parse::<IpAddr>().unwrap()
    );
    assert!(!net.ensure(&mut table, &p));

    // A flush while no agent runs: a restarted agent does not adopt it.
    net.r.ok(&["nft", "flush", "table", "inet", "strait"]);
    let mut restarted = NftTable::new();
    assert!(net.ensure(&mut restarted, &p));
    assert_eq!(net.listing(), listing);

    // A set element removed, a foreign rule added, the table deleted.
    net.r.ok(&[
        "nft",
        "delete",
        "element",
        "inet",
        "strait",
        "remote4",
        "{ 198.51.100.0/24 }",
    ]);
    assert!(net.ensure(&mut restarted, &p));
    assert_eq!(net.listing(), listing);
    net.r
        .ok(&["nft", "add", "rule", "inet", "strait", "forward", "drop"]);
    assert!(net.ensure(&mut restarted, &p));
    assert_eq!(net.listing(), listing);
    net.r.ok(&["nft", "delete", "table", "inet", "strait"]);
    assert!(net.ensure(&mut restarted, &p));
    assert_eq!(net.listing(), listing);
    assert!(!net.ensure(&mut restarted, &p));
}
