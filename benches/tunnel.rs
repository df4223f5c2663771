//! Per-packet cost of the data path: boringtun's encapsulate/decapsulate on an
//! established session, and strait's own lookups on every packet.
//!
//! Run with `cargo bench --bench tunnel` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net};
use rand_core::OsRng;
use strait::tunnel::allowed_ips::AllowedIps;
use strait::tunnel::packet::{classify_datagram, ip_addresses};

/// Inner IPv4 payload sizes (whole inner packet, header included).
const SIZES: [usize; 4] = [64, 512, 1420, 8192];
/// WireGuard data overhead (16-byte header + 16-byte tag), with room for a handshake.
const OVERHEAD: usize = 32;
const BUF: usize = 8192 + OVERHEAD + 148;

/// An IPv4 packet of `len` bytes from 10.9.0.1 to 10.9.0.2 with a valid length field.
fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0xabu8; len];
    p[..20].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 9, 0, 1]);
    p[16..20].copy_from_slice(&[10, 9, 0, 2]);
    p
}

/// Two tunnels that completed a handshake in memory, each with a current session.
fn connected_pair() -> (Tunn, Tunn) {
    let (a_key, b_key) = (
        StaticSecret::random_from_rng(OsRng),
        StaticSecret::random_from_rng(OsRng),
    );
    let (a_pub, b_pub) = (PublicKey::from(&a_key), PublicKey::from(&b_key));
    let mut a = Tunn::new(a_key, b_pub, None, None, 1, None);
    let mut b = Tunn::new(b_key, a_pub, None, None, 2, None);

    // Initiation -> response -> keepalive, each passed to the other side.
    let mut buf = [0u8; BUF];
    let mut relay = |to: &mut Tunn, msg: &[u8]| match to.decapsulate(None, msg, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        TunnResult::Done => Vec::new(),
        _ => panic!("handshake failed"),
    };
    let init = match a.format_handshake_initiation(&mut [0u8; BUF], false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake initiation"),
    };
    let response = relay(&mut b, &init);
    let keepalive = relay(&mut a, &response);
    assert!(relay(&mut b, &keepalive).is_empty());
    // A first data packet each way confirms both sessions.
    send_data(&mut a, &mut b);
    send_data(&mut b, &mut a);
    (a, b)
}

fn send_data(from: &mut Tunn, to: &mut Tunn) {
    let datagram = match from.encapsulate(&ipv4_packet(64), &mut [0u8; BUF]) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no session to send on"),
    };
    assert!(matches!(
        to.decapsulate(None, &datagram, &mut [0u8; BUF]),
        TunnResult::WriteToTunnelV4(..)
    ));
}

fn noise(c: &mut Criterion) {
    let (mut a, mut b) = connected_pair();
    let mut out = vec![0u8; BUF];
    let mut group = c.benchmark_group("noise");
    for size in SIZES {
        let packet = ipv4_packet(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("encapsulate/{size}"), |bench| {
            bench.iter(|| match a.encapsulate(black_box(&packet), &mut out) {
                TunnResult::WriteToNetwork(p) => p.len(),
                _ => panic!("encapsulate failed"),
            })
        });
        // Each datagram can be decrypted once (replay window): seal fresh ones
        // outside the timed part.
        let mut sealed = vec![0u8; BUF];
        group.bench_function(format!("decapsulate/{size}"), |bench| {
            bench.iter_batched_ref(
                || match a.encapsulate(&packet, &mut sealed) {
                    TunnResult::WriteToNetwork(p) => p.to_vec(),
                    _ => panic!("encapsulate failed"),
                },
                |datagram| match b.decapsulate(None, black_box(datagram), &mut out) {
                    TunnResult::WriteToTunnelV4(p, _) => p.len(),
                    _ => panic!("decapsulate failed"),
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn lookups(c: &mut Criterion) {
    // 100 peers, each owning 10.(100+i).i.0/24 and the /32 100.64.0.i.
    let mut table = AllowedIps::new();
    for i in 0..100u8 {
        let v24 = Ipv4Net::new(Ipv4Addr::new(10, 100 + i, i, 0), 24).unwrap();
        let v32 = Ipv4Net::new(Ipv4Addr::new(100, 64, 0, i), 32).unwrap();
        table.insert(IpNet::V4(v24), i as usize);
        table.insert(IpNet::V4(v32), i as usize);
    }
    let hits: Vec<IpAddr> = (0..100u8)
        .flat_map(|i| {
            [
                Ipv4Addr::new(10, 100 + i, i, 77).into(),
                Ipv4Addr::new(100, 64, 0, i).into(),
            ]
        })
        .collect();
    let miss: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();

    let mut group = c.benchmark_group("allowed_ips");
    // Bytes of the full-MTU packet each lookup would route.
    group.throughput(Throughput::Bytes(1420));
    let mut next = hits.iter().cycle();
    group.bench_function("lookup_hit/100_peers", |bench| {
        bench.iter(|| table.lookup(black_box(*next.next().unwrap())).copied())
    });
    group.bench_function("lookup_miss/100_peers", |bench| {
        bench.iter(|| table.lookup(black_box(miss)).copied())
    });
    group.finish();

    // The per-packet classification, on a full-MTU packet.
    let inner = ipv4_packet(1420);
    let (mut tunn, _) = connected_pair();
    let datagram = match tunn.encapsulate(&inner, &mut [0u8; BUF]) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("encapsulate failed"),
    };
    let mut group = c.benchmark_group("packet");
    group.throughput(Throughput::Bytes(inner.len() as u64));
    group.bench_function("ip_addresses/1420", |bench| {
        bench.iter(|| ip_addresses(black_box(&inner)))
    });
    group.bench_function("classify_datagram/1420", |bench| {
        bench.iter(|| classify_datagram(black_box(&datagram)))
    });
    group.finish();
}

criterion_group!(benches, noise, lookups);
criterion_main!(benches);
