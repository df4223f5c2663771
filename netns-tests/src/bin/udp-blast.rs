//! Sends bad datagrams at a WireGuard listen port, bounded in count:
//!
//!   udp-blast garbage ADDR:PORT COUNT
//!       random bytes, truncated and malformed WireGuard messages;
//!       prints "invalid=N malformed=M" (M have a valid type and size).
//!   udp-blast replay ADDR:PORT PCAP PORT
//!       re-sends the WireGuard data messages that PORT sent in a
//!       tcpdump capture; prints "replayed=N".
//!   udp-blast handshake-flood ADDR:PORT PUBKEY COUNT
//!       sends COUNT handshake initiations whose MAC1 is valid for the
//!       responder key PUBKEY (base64) and whose contents are not, as fast
//!       as it can; prints "sent=N cookies=M" with the cookie replies that
//!       came back within a second of the last one.

use std::net::{SocketAddr, UdpSocket};

/// A small deterministic generator: the same run sends the same bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

fn garbage(socket: &UdpSocket, target: SocketAddr, count: usize) {
    let mut rng = XorShift(0x5eed_1234_abcd_ef01);
    let (mut invalid, mut malformed) = (0, 0);
    for i in 0..count {
        let mut buf = vec![0u8; 200];
        rng.fill(&mut buf);
        let datagram: Vec<u8> = match i % 5 {
            // Random bytes of random length.
            0 => buf[..(rng.next() % 200) as usize].to_vec(),
            // A handshake initiation cut short.
            1 => [&[1u8, 0, 0, 0][..], &buf[..96]].concat(),
            // A valid-looking initiation whose MAC cannot verify.
            2 => [&[1u8, 0, 0, 0][..], &buf[..144]].concat(),
            // Data for a session index that does not exist.
            3 => [&[4u8, 0, 0, 0][..], &buf[..60]].concat(),
            // A response of the wrong size.
            _ => [&[2u8, 0, 0, 0][..], &buf[..40]].concat(),
        };
        if matches!(i % 5, 2 | 3) {
            malformed += 1;
        } else {
            invalid += 1;
        }
        socket.send_to(&datagram, target).expect("send");
    }
    println!("invalid={invalid} malformed={malformed}");
}

/// UDP payloads of the data messages (type 4) sent from `port`, read from
/// a pcap file of Ethernet frames carrying IPv4.
fn data_messages_from(pcap: &[u8], port: u16) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut at = 24; // global header
    while at + 16 <= pcap.len() {
        let captured = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + captured).min(pcap.len())];
        at += 16 + captured;
        // Ethernet (14) + IPv4 of length IHL*4 + UDP (8).
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let udp = &ip[ihl..];
        let source_port = u16::from_be_bytes([udp[0], udp[1]]);
        let payload = &udp[8..];
        if source_port == port && payload.len() >= 32 && payload[0] == 4 {
            found.push(payload.to_vec());
        }
    }
    found
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: udp-blast garbage ADDR:PORT COUNT | replay ADDR:PORT PCAP PORT";
    let mode = args.get(1).expect(usage);
    let target: SocketAddr = args.get(2).expect(usage).parse().expect("ADDR:PORT");
    let socket = UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .expect("binding a UDP socket");
    match mode.as_str() {
        "garbage" => {
            let count: usize = args.get(3).expect(usage).parse().expect("COUNT");
            garbage(&socket, target, count.min(100_000));
        }
        "replay" => {
            let pcap = std::fs::read(args.get(3).expect(usage)).expect("reading the capture");
            let port: u16 = args.get(4).expect(usage).parse().expect("PORT");
            let messages = data_messages_from(&pcap, port);
            for message in &messages {
                socket.send_to(message, target).expect("send");
            }
            println!("replayed={}", messages.len());
        }
        "handshake-flood" => {
            let key = args.get(3).expect(usage);
            let count: usize = args.get(4).expect(usage).parse().expect("COUNT");
            handshake_flood(&socket, target, key, count.min(100_000));
        }
        _ => panic!("{usage}"),
    }
}

/// Initiations that pass the responder's cheap MAC1 check, so that only its
/// load (not a bad MAC) decides whether it answers with a cookie.
fn handshake_flood(socket: &UdpSocket, target: SocketAddr, responder_key: &str, count: usize) {
    use base64::Engine;
    use blake2::digest::{FixedOutput, KeyInit, Update};
    use blake2::{Blake2s256, Blake2sMac, Digest};

    let key = base64::engine::general_purpose::STANDARD
        .decode(responder_key.trim())
        .expect("PUBKEY is base64");
    // MAC1 key = HASH("mac1----" || responder public key).
    let mac1_key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(&key)
        .finalize();
    let mut rng = XorShift(0xf100d);
    for _ in 0..count {
        let mut message = [0u8; 148];
        rng.fill(&mut message[4..116]);
        message[0] = 1;
        let mut mac =
            <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(&mac1_key)
                .expect("a 32-byte key");
        Update::update(&mut mac, &message[..116]);
        message[116..132].copy_from_slice(&mac.finalize_fixed());
        socket.send_to(&message, target).expect("send");
    }
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .expect("read timeout");
    let mut cookies = 0;
    let mut buf = [0u8; 256];
    while let Ok(len) = socket.recv(&mut buf) {
        if len == 64 && buf[0] == 3 {
            cookies += 1;
        }
    }
    println!("sent={count} cookies={cookies}");
}
