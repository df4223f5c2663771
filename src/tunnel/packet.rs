//! Classification of the packets the engine moves: inner IP packets read
//! from the TUN device and datagrams received on the listen port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// The addresses of an inner IP packet, or `None` for anything that is not
/// a whole IPv4/IPv6 header.
pub fn ip_addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 if packet.len() >= IPV4_HEADER_LEN => {
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            Some((Ipv4Addr::from(src).into(), Ipv4Addr::from(dst).into()))
        }
        6 if packet.len() >= IPV6_HEADER_LEN => {
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            Some((Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into()))
        }
        _ => None,
    }
}

/// The kind of a datagram on the listen port, from its type field and size
/// as the WireGuard protocol fixes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    HandshakeInitiation,
    /// The rest carry `receiver`: the session index of ours they answer.
    HandshakeResponse {
        receiver: u32,
    },
    CookieReply {
        receiver: u32,
    },
    Data {
        receiver: u32,
    },
    /// Anything else: counted and dropped.
    Invalid,
}

const HANDSHAKE_INITIATION_LEN: usize = 148;
const HANDSHAKE_RESPONSE_LEN: usize = 92;
const COOKIE_REPLY_LEN: usize = 64;
/// Header plus the AEAD tag of an empty (keepalive) payload.
const DATA_MIN_LEN: usize = 32;

pub fn classify_datagram(datagram: &[u8]) -> Datagram {
    let Some(header) = datagram.get(..4) else {
        return Datagram::Invalid;
    };
    // The type is one byte followed by three reserved zero bytes.
    let index_at = |at: usize| u32::from_le_bytes(datagram[at..at + 4].try_into().unwrap());
    match (
        u32::from_le_bytes(header.try_into().unwrap()),
        datagram.len(),
    ) {
        (1, HANDSHAKE_INITIATION_LEN) => Datagram::HandshakeInitiation,
        (2, HANDSHAKE_RESPONSE_LEN) => Datagram::HandshakeResponse {
            receiver: index_at(8),
        },
        (3, COOKIE_REPLY_LEN) => Datagram::CookieReply {
            receiver: index_at(4),
        },
        (4, len) if len >= DATA_MIN_LEN => Datagram::Data {
            receiver: index_at(4),
        },
        _ => Datagram::Invalid,
    }
}

/// The peer a session index belongs to: boringtun gives each peer's
/// sessions indices `peer_index << 8 | n`.
pub fn peer_index_of(receiver: u32) -> u32 {
    receiver >> 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn ipv4_addresses() {
        let p = ipv4_packet([192, 0, 2, 1], [198, 51, 100, 2]);
        assert_eq!(
            ip_addresses(&p),
            Some((
                "192.0.2.1".parse().unwrap(),
                "198.51.100.2".parse().unwrap()
            ))
        );
    }

    #[test]
    fn ipv6_addresses() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        assert_eq!(ip_addresses(&p), Some((src.into(), dst.into())));
    }

    #[test]
    fn truncated_or_unknown_inner_packets_have_no_addresses() {
        assert_eq!(ip_addresses(&[]), None);
        assert_eq!(ip_addresses(&[0x45; 19]), None);
        assert_eq!(ip_addresses(&[0x60; 39]), None);
        assert_eq!(ip_addresses(&[0x50; 64]), None);
    }

    fn datagram(kind: u8, len: usize) -> Vec<u8> {
        let mut d = vec![0u8; len];
        d[0] = kind;
        d
    }

    #[test]
    fn datagrams_by_type_and_size() {
        assert_eq!(
            classify_datagram(&datagram(1, 148)),
            Datagram::HandshakeInitiation
        );
        let mut response = datagram(2, 92);
        response[8] = 9;
        assert_eq!(
            classify_datagram(&response),
            Datagram::HandshakeResponse { receiver: 9 }
        );
        let mut cookie = datagram(3, 64);
        cookie[4] = 7;
        assert_eq!(
            classify_datagram(&cookie),
            Datagram::CookieReply { receiver: 7 }
        );
        let mut data = datagram(4, 32);
        data[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        assert_eq!(
            classify_datagram(&data),
            Datagram::Data {
                receiver: 0x0102_0304
            }
        );
        assert_eq!(peer_index_of(0x0102_0304), 0x0001_0203);
    }

    #[test]
    fn wrong_sizes_and_types_are_invalid() {
        assert_eq!(classify_datagram(&[]), Datagram::Invalid);
        assert_eq!(classify_datagram(&[1, 0, 0]), Datagram::Invalid);
        assert_eq!(classify_datagram(&datagram(1, 147)), Datagram::Invalid);
        assert_eq!(classify_datagram(&datagram(2, 148)), Datagram::Invalid);
        assert_eq!(classify_datagram(&datagram(4, 31)), Datagram::Invalid);
        assert_eq!(classify_datagram(&datagram(5, 64)), Datagram::Invalid);
        // Reserved bytes must be zero.
        let mut d = datagram(1, 148);
        d[1] = 1;
        assert_eq!(classify_datagram(&d), Datagram::Invalid);
    }
}
