//! TUN offloads without I/O: the `virtio_net_hdr` that an `IFF_VNET_HDR`
//! TUN puts before every packet, the splitting of the kernel's TCP/UDP
//! super-packets (TSO/USO) into packets that fit the tunnel, and the
//! coalescing of received TCP segments back into one super-packet (GRO).
//! Moving 64 KB per system call instead of one MTU is most of the engine's
//! throughput.

/// `struct virtio_net_hdr` without `num_buffers`, the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// The checksum from `csum_start` to the end is still to be computed; the
/// field at `csum_start + csum_offset` holds the pseudo-header sum.
pub const F_NEEDS_CSUM: u8 = 1;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Set on TCP super-packets carrying CWR.
const GSO_ECN: u8 = 0x80;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// Offset of the checksum field in a TCP header (`csum_offset` for TCP).
const TCP_CHECKSUM_AT: usize = 16;
const UDP_CHECKSUM_AT: usize = 6;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// IP plus transport headers longer than this are not segmented (the
/// largest real one, IPv4 and TCP with full options, is 120 bytes).
const MAX_HEADERS_LEN: usize = 256;
/// The largest IP packet: what one coalesced packet may grow to.
const MAX_IP_PACKET: usize = 65_535;
/// Segments in one coalesced packet, as the kernel's own GRO allows.
pub const MAX_RUN_SEGMENTS: usize = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the front of what the TUN gave (native byte
    /// order: the TUN is left in its legacy endianness).
    pub fn parse(bytes: &[u8]) -> Option<VnetHdr> {
        let b = bytes.get(..VNET_HDR_LEN)?;
        let u16_at = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet from the TUN could not be made ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Headers or offsets outside the packet, or a zero segment size.
    Bounds,
    /// A GSO type or IP version this engine does not take.
    Unsupported,
}

/// Internet checksum arithmetic (RFC 1071): 32-bit big-endian words added
/// into 64-bit accumulators (four of them, independent, so the additions
/// run in parallel), folded to 16 bits at the end.
fn sum_bytes(data: &[u8], acc: u64) -> u64 {
    let word = |w: &[u8]| u64::from(u32::from_be_bytes(w.try_into().unwrap()));
    let mut lanes = [acc, 0, 0, 0];
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += word(w);
        }
    }
    let mut words = blocks.remainder().chunks_exact(4);
    let mut sum: u64 = lanes.iter().sum::<u64>() + (&mut words).map(word).sum::<u64>();
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum += word(&tail);
    sum
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store: the complement, with 0 sent as 0xffff (the same
/// value in one's complement, and for UDP 0 would mean "none").
fn finish(acc: u64) -> u16 {
    match !fold(acc) {
        0 => 0xffff,
        c => c,
    }
}

/// Sum of the TCP/UDP pseudo-header of an IPv4 or IPv6 packet.
fn pseudo_header_sum(packet: &[u8], protocol: u8, l4_len: usize) -> u64 {
    let addresses = if packet[0] >> 4 == 4 {
        &packet[12..20]
    } else {
        &packet[8..40]
    };
    sum_bytes(addresses, u64::from(protocol) + l4_len as u64)
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Sets the IP length field of a packet whose buffer is exactly the
/// packet, and for IPv4 the header checksum.
fn fix_ip_header(packet: &mut [u8]) {
    let len = packet.len();
    if packet[0] >> 4 == 4 {
        put_u16(packet, 2, len as u16);
        put_u16(packet, 10, 0);
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let sum = !fold(sum_bytes(&packet[..ihl], 0));
        put_u16(packet, 10, sum);
    } else {
        put_u16(packet, 4, (len - IPV6_HEADER_LEN) as u16);
    }
}

/// Computes the transport checksum the kernel left to us: the field at
/// `csum_start + csum_offset` holds the pseudo-header sum already.
fn complete_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> Result<(), Malformed> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return Err(Malformed::Bounds);
    }
    let sum = finish(sum_bytes(&packet[start..], 0));
    put_u16(packet, field, sum);
    Ok(())
}

/// Makes the packet(s) in `packet` (what followed the virtio header) ready
/// to send and hands each to `emit`, in order. A plain packet gets its
/// checksum completed if the kernel asked; a super-packet is split in
/// place into `gso_size` payloads, each behind a copy of the headers with
/// its lengths, IPv4 id, TCP sequence number, flags and checksums fixed.
/// A segment's headers overwrite the end of the previous segment, which
/// `emit` has consumed by then.
pub fn for_each_segment(
    hdr: &VnetHdr,
    packet: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<(), Malformed> {
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(hdr, packet)?;
        }
        emit(packet);
        return Ok(());
    }
    let version = packet.first().ok_or(Malformed::Bounds)? >> 4;
    let (protocol, l4_min) = match (hdr.gso_type & !GSO_ECN, version) {
        (GSO_TCPV4, 4) | (GSO_TCPV6, 6) => (IPPROTO_TCP, TCP_HEADER_LEN),
        (GSO_UDP_L4, 4 | 6) => (IPPROTO_UDP, UDP_HEADER_LEN),
        _ => return Err(Malformed::Unsupported),
    };
    let l4 = usize::from(hdr.csum_start);
    let ip_min = if version == 4 {
        IPV4_HEADER_LEN
    } else {
        IPV6_HEADER_LEN
    };
    if l4 < ip_min || l4 + l4_min > packet.len() {
        return Err(Malformed::Bounds);
    }
    let l4_len = if protocol == IPPROTO_TCP {
        usize::from(packet[l4 + 12] >> 4) * 4
    } else {
        UDP_HEADER_LEN
    };
    let headers = l4 + l4_len;
    let mss = usize::from(hdr.gso_size);
    if l4_len < l4_min || headers > packet.len() || headers > MAX_HEADERS_LEN || mss == 0 {
        return Err(Malformed::Bounds);
    }
    let mut template = [0u8; MAX_HEADERS_LEN];
    template[..headers].copy_from_slice(&packet[..headers]);
    let template = &template[..headers];
    let first_id = get_u16(template, 4);
    let first_seq = get_u32(template, l4 + 4);
    let payload = packet.len() - headers;
    let count = payload.div_ceil(mss).max(1);

    for i in 0..count {
        let start = i * mss;
        let chunk = mss.min(payload - start);
        let segment = &mut packet[start..start + headers + chunk];
        segment[..headers].copy_from_slice(template);
        if version == 4 {
            put_u16(segment, 4, first_id.wrapping_add(i as u16));
        }
        fix_ip_header(segment);
        let l4_bytes = segment.len() - l4;
        let checksum_at = if protocol == IPPROTO_TCP {
            let seq = first_seq.wrapping_add(start as u32);
            segment[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let flags = &mut segment[l4 + 13];
            if i > 0 {
                *flags &= !TCP_CWR;
            }
            if i + 1 < count {
                *flags &= !(TCP_FIN | TCP_PSH);
            }
            l4 + TCP_CHECKSUM_AT
        } else {
            put_u16(segment, l4 + 4, l4_bytes as u16);
            l4 + UDP_CHECKSUM_AT
        };
        put_u16(segment, checksum_at, 0);
        let sum = sum_bytes(
            &segment[l4..],
            pseudo_header_sum(segment, protocol, l4_bytes),
        );
        put_u16(segment, checksum_at, finish(sum));
        emit(segment);
    }
    Ok(())
}

/// What coalescing needs to know of a TCP/IP packet.
#[derive(Debug, Clone, Copy)]
struct TcpSegment {
    /// Offset of the TCP header.
    l4: usize,
    /// IP plus TCP header length.
    headers: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// A TCP packet without IP options, extension headers or fragmentation,
/// whose IP length matches its buffer: the only ones worth coalescing.
fn tcp_segment(packet: &[u8]) -> Option<TcpSegment> {
    let l4 = match *packet.first()? >> 4 {
        4 if packet.len() >= IPV4_HEADER_LEN
            && packet[0] & 0x0f == 5
            && packet[9] == IPPROTO_TCP
            && usize::from(get_u16(packet, 2)) == packet.len()
            // Neither "more fragments" nor a fragment offset.
            && get_u16(packet, 6) & 0x3fff == 0 =>
        {
            IPV4_HEADER_LEN
        }
        6 if packet.len() >= IPV6_HEADER_LEN
            && packet[6] == IPPROTO_TCP
            && usize::from(get_u16(packet, 4)) + IPV6_HEADER_LEN == packet.len() =>
        {
            IPV6_HEADER_LEN
        }
        _ => return None,
    };
    let tcp_len = usize::from(*packet.get(l4 + 12)? >> 4) * 4;
    let headers = l4 + tcp_len;
    if tcp_len < TCP_HEADER_LEN || headers > packet.len() {
        return None;
    }
    Some(TcpSegment {
        l4,
        headers,
        payload: packet.len() - headers,
        seq: get_u32(packet, l4 + 4),
        flags: packet[l4 + 13],
    })
}

/// Consecutive in-order segments of one TCP flow that go to the TUN as one
/// super-packet, the way the kernel's GRO would merge them: same addresses,
/// ports, IP fields, ACK number, window and options; plain ACK segments,
/// PSH allowed on the last; every payload `gso_size` but the last, which
/// may be shorter.
#[derive(Debug, Clone)]
pub struct TcpRun {
    head: TcpSegment,
    gso_size: usize,
    payload: usize,
    count: usize,
    push: bool,
    closed: bool,
}

impl TcpRun {
    /// A run starting with `head`, if it can start one.
    pub fn start(head: &[u8]) -> Option<TcpRun> {
        let seg = tcp_segment(head)?;
        if seg.payload == 0 || seg.flags & !TCP_PSH != TCP_ACK {
            return None;
        }
        let push = seg.flags & TCP_PSH != 0;
        Some(TcpRun {
            head: seg,
            gso_size: seg.payload,
            payload: seg.payload,
            count: 1,
            push,
            closed: push,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The payload of a packet of this run (`head` or one appended).
    pub fn payload_of<'p>(&self, packet: &'p [u8]) -> &'p [u8] {
        &packet[self.head.headers..]
    }

    /// Appends `packet` if it continues the run that `head` started.
    pub fn try_append(&mut self, head: &[u8], packet: &[u8]) -> bool {
        if self.closed || self.count == MAX_RUN_SEGMENTS {
            return false;
        }
        let Some(seg) = tcp_segment(packet) else {
            return false;
        };
        let h = &self.head;
        let same_ip = if h.l4 == IPV4_HEADER_LEN {
            // Version, length, TOS; TTL and protocol; DF; addresses.
            head[..2] == packet[..2]
                && head[8..10] == packet[8..10]
                && head[6] & 0x40 == packet[6] & 0x40
                && head[12..20] == packet[12..20]
        } else {
            // Version, traffic class, flow label; next header, hop limit;
            // addresses.
            head[..4] == packet[..4] && head[6..40] == packet[6..40]
        };
        let l4 = h.l4;
        let fits = seg.l4 == l4
            && seg.headers == h.headers
            && seg.payload > 0
            && seg.payload <= self.gso_size
            && seg.flags & !TCP_PSH == TCP_ACK
            && seg.seq == h.seq.wrapping_add(self.payload as u32)
            && h.headers + self.payload + seg.payload <= MAX_IP_PACKET;
        // Ports; ACK number; window; options.
        if !(fits
            && same_ip
            && head[l4..l4 + 4] == packet[l4..l4 + 4]
            && head[l4 + 8..l4 + 12] == packet[l4 + 8..l4 + 12]
            && head[l4 + 14..l4 + 16] == packet[l4 + 14..l4 + 16]
            && head[l4 + TCP_HEADER_LEN..h.headers] == packet[l4 + TCP_HEADER_LEN..h.headers])
        {
            return false;
        }
        self.payload += seg.payload;
        self.count += 1;
        self.push = seg.flags & TCP_PSH != 0;
        self.closed = self.push || seg.payload < self.gso_size;
        true
    }

    /// Writes into `out` the virtio header and the IP and TCP headers of
    /// the coalesced packet (built from `head`'s) and returns their length;
    /// the payloads of the run's packets follow them in order. The kernel
    /// finishes the TCP checksum (`F_NEEDS_CSUM`), so its field holds the
    /// pseudo-header sum.
    pub fn write_headers(&self, head: &[u8], out: &mut [u8]) -> usize {
        let h = &self.head;
        let ipv4 = h.l4 == IPV4_HEADER_LEN;
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if ipv4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: h.headers as u16,
            gso_size: self.gso_size as u16,
            csum_start: h.l4 as u16,
            csum_offset: TCP_CHECKSUM_AT as u16,
        };
        out[..VNET_HDR_LEN].copy_from_slice(&vnet.encode());
        let headers = &mut out[VNET_HDR_LEN..VNET_HDR_LEN + h.headers];
        headers.copy_from_slice(&head[..h.headers]);
        let total = h.headers + self.payload;
        if ipv4 {
            put_u16(headers, 2, total as u16);
            put_u16(headers, 10, 0);
            let sum = !fold(sum_bytes(&headers[..IPV4_HEADER_LEN], 0));
            put_u16(headers, 10, sum);
        } else {
            put_u16(headers, 4, (total - IPV6_HEADER_LEN) as u16);
        }
        if self.push {
            headers[h.l4 + 13] |= TCP_PSH;
        }
        let l4_len = total - h.l4;
        let pseudo = fold(pseudo_header_sum(headers, IPPROTO_TCP, l4_len));
        put_u16(headers, h.l4 + TCP_CHECKSUM_AT, pseudo);
        VNET_HDR_LEN + h.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC4: [u8; 4] = [192, 0, 2, 1];
    const DST4: [u8; 4] = [198, 51, 100, 2];
    /// 2001:db8::1 and 2001:db8::2.
    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const SEQ: u32 = 0xffff_f000; // wraps inside the tests' super-packets
    /// TCP options as Linux sends them on data: NOP, NOP, timestamps.
    const TS_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// An IPv4 or IPv6 TCP packet with `flags`, correct lengths and a
    /// correct (complete) checksum.
    fn tcp_packet(v6: bool, seq: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        let l4_len = 20 + TS_OPTIONS.len();
        let mut p = vec![0u8; ip_len + l4_len];
        if v6 {
            p[0] = 0x60;
            p[6] = IPPROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&SRC6);
            p[24..40].copy_from_slice(&DST6);
        } else {
            p[0] = 0x45;
            p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = 64;
            p[9] = IPPROTO_TCP;
            p[12..16].copy_from_slice(&SRC4);
            p[16..20].copy_from_slice(&DST4);
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        p[t + 12] = ((l4_len / 4) as u8) << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        p[t + 20..].copy_from_slice(&TS_OPTIONS);
        p.extend_from_slice(data);
        fix_ip_header(&mut p);
        let l4_bytes = p.len() - t;
        let sum = sum_bytes(&p[t..], pseudo_header_sum(&p, IPPROTO_TCP, l4_bytes));
        put_u16(&mut p, t + TCP_CHECKSUM_AT, finish(sum));
        p
    }

    fn udp_packet(v6: bool, data: &[u8]) -> Vec<u8> {
        let mut p = tcp_packet(v6, 0, 0, &[]);
        let ip_len = if v6 { 40 } else { 20 };
        p.truncate(ip_len + 8);
        if v6 {
            p[6] = IPPROTO_UDP;
        } else {
            p[9] = IPPROTO_UDP;
        }
        p.extend_from_slice(data);
        fix_ip_header(&mut p);
        let udp_len = (p.len() - ip_len) as u16;
        put_u16(&mut p, ip_len + 4, udp_len);
        put_u16(&mut p, ip_len + 6, 0);
        let sum = sum_bytes(
            &p[ip_len..],
            pseudo_header_sum(&p, IPPROTO_UDP, p.len() - ip_len),
        );
        put_u16(&mut p, ip_len + 6, finish(sum));
        p
    }

    /// What the kernel hands over with TSO/USO: a super-packet whose
    /// transport checksum field holds only the pseudo-header sum.
    fn super_packet(mut p: Vec<u8>, gso_type: u8, mss: u16) -> (VnetHdr, Vec<u8>) {
        let (l4, protocol) = if p[0] >> 4 == 4 {
            (20, p[9])
        } else {
            (40, p[6])
        };
        let (protocol, at, l4_hdr) = if protocol == IPPROTO_UDP {
            (IPPROTO_UDP, UDP_CHECKSUM_AT, 8)
        } else {
            (
                IPPROTO_TCP,
                TCP_CHECKSUM_AT,
                usize::from(p[l4 + 12] >> 4) * 4,
            )
        };
        let l4_bytes = p.len() - l4;
        let pseudo = fold(pseudo_header_sum(&p, protocol, l4_bytes));
        put_u16(&mut p, l4 + at, pseudo);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: (l4 + l4_hdr) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: at as u16,
        };
        (hdr, p)
    }

    fn segments(hdr: &VnetHdr, mut packet: Vec<u8>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for_each_segment(hdr, &mut packet, |s| out.push(s.to_vec())).unwrap();
        out
    }

    /// A correct transport checksum sums, with the pseudo-header, to 0xffff.
    fn transport_checksum_ok(p: &[u8], protocol: u8) -> bool {
        let l4 = if p[0] >> 4 == 4 { 20 } else { 40 };
        fold(sum_bytes(
            &p[l4..],
            pseudo_header_sum(p, protocol, p.len() - l4),
        )) == 0xffff
    }

    fn ipv4_checksum_ok(p: &[u8]) -> bool {
        fold(sum_bytes(&p[..20], 0)) == 0xffff
    }

    #[test]
    fn vnet_header_round_trip() {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1348,
            csum_start: 40,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&hdr.encode()), Some(hdr));
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
        assert_eq!(VnetHdr::parse(&[0; 10]), Some(VnetHdr::default()));
    }

    #[test]
    fn checksum_of_known_header() {
        // The IPv4 header example of RFC 1071's usual walk-through.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!fold(sum_bytes(&header, 0)), 0xb861);
        // Odd lengths pad with a zero byte.
        assert_eq!(fold(sum_bytes(&[0x01, 0x02, 0x03], 0)), 0x0402);
    }

    #[test]
    fn checksum_agrees_with_summing_16_bit_words() {
        let data = payload(1500);
        for len in (0..70).chain([1419, 1420, 1500]) {
            let by_words: u64 = data[..len]
                .chunks(2)
                .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
                .sum();
            assert_eq!(
                fold(sum_bytes(&data[..len], 7)),
                fold(by_words + 7),
                "{len}"
            );
        }
    }

    fn check_tcp_segmentation(v6: bool) {
        let data = payload(5000);
        let mss = 1360;
        let original = tcp_packet(v6, SEQ, TCP_ACK | TCP_PSH | TCP_FIN, &data);
        let gso = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        let (hdr, packet) = super_packet(original.clone(), gso, mss as u16);
        let segs = segments(&hdr, packet);
        assert_eq!(segs.len(), 4);
        let l4 = if v6 { 40 } else { 20 };
        let headers = l4 + 32;
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let last = i == segs.len() - 1;
            assert_eq!(s.len(), headers + if last { 5000 - 3 * mss } else { mss });
            if v6 {
                assert_eq!(usize::from(get_u16(s, 4)), s.len() - 40);
            } else {
                assert_eq!(usize::from(get_u16(s, 2)), s.len());
                assert_eq!(get_u16(s, 4), 0x1234 + i as u16);
                assert!(ipv4_checksum_ok(s), "segment {i}");
            }
            assert_eq!(get_u32(s, l4 + 4), SEQ.wrapping_add((i * mss) as u32));
            let flags = s[l4 + 13];
            let expected = if last {
                TCP_ACK | TCP_PSH | TCP_FIN
            } else {
                TCP_ACK
            };
            assert_eq!(flags, expected, "segment {i}");
            assert_eq!(s[l4 + 20..headers], TS_OPTIONS);
            assert!(transport_checksum_ok(s, IPPROTO_TCP), "segment {i}");
            joined.extend_from_slice(&s[headers..]);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn tso_super_packets_split_into_valid_segments() {
        check_tcp_segmentation(false);
        check_tcp_segmentation(true);
    }

    #[test]
    fn cwr_stays_on_the_first_segment_only() {
        let original = tcp_packet(false, SEQ, TCP_ACK | TCP_CWR, &payload(3000));
        let (hdr, packet) = super_packet(original, GSO_TCPV4 | GSO_ECN, 1400);
        let flags: Vec<u8> = segments(&hdr, packet).iter().map(|s| s[33]).collect();
        assert_eq!(flags, [TCP_ACK | TCP_CWR, TCP_ACK, TCP_ACK]);
    }

    #[test]
    fn uso_super_packets_split_into_valid_datagrams() {
        for v6 in [false, true] {
            let data = payload(3000);
            let (hdr, packet) = super_packet(udp_packet(v6, &data), GSO_UDP_L4, 1200);
            let segs = segments(&hdr, packet);
            assert_eq!(segs.len(), 3);
            let l4 = if v6 { 40 } else { 20 };
            let mut joined = Vec::new();
            for s in &segs {
                assert_eq!(usize::from(get_u16(s, l4 + 4)), s.len() - l4);
                assert!(transport_checksum_ok(s, IPPROTO_UDP));
                joined.extend_from_slice(&s[l4 + 8..]);
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn a_super_packet_of_one_segment_passes_whole() {
        let original = tcp_packet(false, SEQ, TCP_ACK, &payload(100));
        let (hdr, packet) = super_packet(original.clone(), GSO_TCPV4, 1400);
        assert_eq!(segments(&hdr, packet), vec![original]);
    }

    #[test]
    fn plain_packets_get_the_checksum_the_kernel_left_to_us() {
        let original = udp_packet(true, &payload(333));
        let (mut hdr, packet) = super_packet(original.clone(), GSO_NONE, 0);
        assert_eq!(segments(&hdr, packet.clone()), vec![original.clone()]);
        // Without NEEDS_CSUM the packet is left alone.
        hdr.flags = 0;
        assert_eq!(segments(&hdr, original.clone()), vec![original]);
    }

    #[test]
    fn malformed_offload_requests_are_refused() {
        let original = tcp_packet(false, SEQ, TCP_ACK, &payload(3000));
        let (hdr, packet) = super_packet(original, GSO_TCPV4, 1400);
        let refuse = |hdr: VnetHdr, mut p: Vec<u8>| for_each_segment(&hdr, &mut p, |_| {});
        let zero_mss = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(refuse(zero_mss, packet.clone()), Err(Malformed::Bounds));
        let outside = VnetHdr {
            csum_start: 5000,
            ..hdr
        };
        assert_eq!(refuse(outside, packet.clone()), Err(Malformed::Bounds));
        let v6_type_on_v4 = VnetHdr {
            gso_type: GSO_TCPV6,
            ..hdr
        };
        assert_eq!(
            refuse(v6_type_on_v4, packet.clone()),
            Err(Malformed::Unsupported)
        );
        let plain = VnetHdr {
            gso_type: GSO_NONE,
            csum_offset: 4000,
            ..hdr
        };
        assert_eq!(refuse(plain, packet), Err(Malformed::Bounds));
    }

    /// Coalesces `packets` greedily from the first; returns the run and
    /// how many packets it took.
    fn run_of(packets: &[Vec<u8>]) -> Option<(TcpRun, usize)> {
        let mut run = TcpRun::start(&packets[0])?;
        let taken = 1 + packets[1..]
            .iter()
            .take_while(|p| run.try_append(&packets[0], p))
            .count();
        Some((run, taken))
    }

    /// The coalesced packet as the TUN would receive it.
    fn coalesced(run: &TcpRun, packets: &[Vec<u8>]) -> (VnetHdr, Vec<u8>) {
        let mut out = vec![0u8; 512];
        let n = run.write_headers(&packets[0], &mut out);
        out.truncate(n);
        for p in &packets[..run.count()] {
            out.extend_from_slice(run.payload_of(p));
        }
        (VnetHdr::parse(&out).unwrap(), out[VNET_HDR_LEN..].to_vec())
    }

    #[test]
    fn in_order_segments_coalesce_back_into_the_super_packet() {
        for v6 in [false, true] {
            let data = payload(5000);
            let original = tcp_packet(v6, SEQ, TCP_ACK | TCP_PSH, &data);
            let gso = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            let (hdr, packet) = super_packet(original, gso, 1360);
            let segs = segments(&hdr, packet.clone());
            let (run, taken) = run_of(&segs).unwrap();
            assert_eq!((taken, run.count()), (4, 4));
            let (got_hdr, got) = coalesced(&run, &segs);
            assert_eq!(got_hdr, hdr);
            if !v6 {
                // The first segment's IPv4 id is the super-packet's.
                assert!(ipv4_checksum_ok(&got));
            }
            assert_eq!(got, packet, "v6={v6}");
        }
    }

    #[test]
    fn coalescing_stops_where_the_kernel_would() {
        let seg = |seq: u32, flags: u8, len: usize| tcp_packet(false, seq, flags, &payload(len));
        let m = 1000u32;
        let full = m as usize;
        // Out of order: the third segment is missing.
        let gap = [
            seg(0, TCP_ACK, full),
            seg(m, TCP_ACK, full),
            seg(3 * m, TCP_ACK, full),
        ];
        assert_eq!(run_of(&gap).unwrap().1, 2);
        // A short segment ends the run; so does PSH.
        let short = [
            seg(0, TCP_ACK, full),
            seg(m, TCP_ACK, 10),
            seg(m + 10, TCP_ACK, full),
        ];
        assert_eq!(run_of(&short).unwrap().1, 2);
        let push = [seg(0, TCP_ACK | TCP_PSH, full), seg(m, TCP_ACK, full)];
        assert_eq!(run_of(&push).unwrap().1, 1);
        // A longer segment cannot follow.
        let longer = [seg(0, TCP_ACK, full), seg(m, TCP_ACK, full + 1)];
        assert_eq!(run_of(&longer).unwrap().1, 1);
        // FIN, SYN, pure ACKs never coalesce.
        let fin = [seg(0, TCP_ACK, full), seg(m, TCP_ACK | TCP_FIN, full)];
        assert_eq!(run_of(&fin).unwrap().1, 1);
        assert!(run_of(&[seg(0, 0x02, full)]).is_none());
        assert!(run_of(&[seg(0, TCP_ACK, 0)]).is_none());
        // Another flow, another ACK number, another window.
        let mut other_port = seg(m, TCP_ACK, full);
        other_port[21] ^= 1;
        let mut other_ack = seg(m, TCP_ACK, full);
        other_ack[31] ^= 1;
        let mut other_window = seg(m, TCP_ACK, full);
        other_window[35] ^= 1;
        let mut other_ttl = seg(m, TCP_ACK, full);
        other_ttl[8] = 3;
        for other in [other_port, other_ack, other_window, other_ttl] {
            assert_eq!(run_of(&[seg(0, TCP_ACK, full), other]).unwrap().1, 1);
        }
        // IPv4 fragments and IP options are left alone.
        let mut fragment = seg(0, TCP_ACK, full);
        fragment[6] |= 0x20;
        assert!(run_of(&[fragment]).is_none());
        // No more than 64 segments, nor more than an IP packet holds.
        let many: Vec<_> = (0..70).map(|i| seg(i * 100, TCP_ACK, 100)).collect();
        assert_eq!(run_of(&many).unwrap().1, MAX_RUN_SEGMENTS);
        let big: Vec<_> = (0..5).map(|i| seg(i * 20_000, TCP_ACK, 20_000)).collect();
        assert_eq!(run_of(&big).unwrap().1, 3);
    }
}
