//! Health of each connection: ICMP echo through the tunnel to the remote
//! gateway's health-check address, once per interval, as Submariner does.
//! [`Health`] is the pure state machine; [`Pinger`] does the I/O.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use crate::broker::types::{go_duration, LatencyRtt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No reply yet.
    Connecting,
    Connected,
    /// `max_lost` probes in a row went unanswered.
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connecting => "connecting",
            Status::Connected => "connected",
            Status::Error => "error",
        }
    }
}

/// One connection's probes and round-trip times.
#[derive(Debug, Clone)]
pub struct Health {
    status: Status,
    outstanding: Option<(u16, Instant)>,
    lost_in_row: u32,
    last: Option<Duration>,
    min: Duration,
    max: Duration,
    sum_secs: f64,
    sum_squares: f64,
    count: u64,
    /// When the connection last became connected.
    pub established: Option<std::time::SystemTime>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            status: Status::Connecting,
            outstanding: None,
            lost_in_row: 0,
            last: None,
            min: Duration::MAX,
            max: Duration::ZERO,
            sum_secs: 0.0,
            sum_squares: 0.0,
            count: 0,
            established: None,
        }
    }
}

impl Health {
    pub fn status(&self) -> Status {
        self.status
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        self.last
    }

    /// A probe goes out: the previous one, still unanswered, is lost.
    pub fn probe_sent(&mut self, seq: u16, now: Instant, max_lost: u32) {
        if self.outstanding.take().is_some() {
            self.lost_in_row += 1;
            if self.lost_in_row >= max_lost {
                self.status = Status::Error;
            }
        }
        self.outstanding = Some((seq, now));
    }

    /// A reply came; ignored unless it answers the outstanding probe.
    pub fn reply(
        &mut self,
        seq: u16,
        now: Instant,
        wall: std::time::SystemTime,
    ) -> Option<Duration> {
        let (sent_seq, sent_at) = self.outstanding?;
        if sent_seq != seq {
            return None;
        }
        self.outstanding = None;
        let rtt = now.saturating_duration_since(sent_at);
        self.lost_in_row = 0;
        if self.status != Status::Connected {
            self.status = Status::Connected;
            self.established = Some(wall);
        }
        self.last = Some(rtt);
        self.min = self.min.min(rtt);
        self.max = self.max.max(rtt);
        let secs = rtt.as_secs_f64();
        self.sum_secs += secs;
        self.sum_squares += secs * secs;
        self.count += 1;
        Some(rtt)
    }

    /// Why the connection is not connected, for the status message.
    pub fn message(&self, target: IpAddr) -> String {
        match self.status {
            Status::Connected => String::new(),
            Status::Connecting => format!("waiting for the first reply from {target}"),
            Status::Error => format!(
                "{} probes in a row to {target} went unanswered",
                self.lost_in_row
            ),
        }
    }

    pub fn latency(&self) -> Option<LatencyRtt> {
        let last = self.last?;
        let mean = self.sum_secs / self.count as f64;
        let variance = (self.sum_squares / self.count as f64 - mean * mean).max(0.0);
        Some(LatencyRtt {
            last: go_duration(last),
            min: go_duration(self.min),
            average: go_duration(Duration::from_secs_f64(mean)),
            max: go_duration(self.max),
            std_dev: go_duration(Duration::from_secs_f64(variance.sqrt())),
        })
    }
}

/// Probes many targets from one raw ICMP socket bound to our health-check
/// address, so that replies come back through the tunnel to us.
pub struct Pinger {
    socket: Socket,
    stopped: std::sync::atomic::AtomicBool,
    identifier: u16,
    /// Target by the sequence number of its outstanding probe.
    in_flight: Mutex<HashMap<u16, Ipv4Addr>>,
    next_seq: Mutex<u16>,
    pub health: Mutex<HashMap<Ipv4Addr, Health>>,
}

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

impl Pinger {
    pub fn new(source: Ipv4Addr) -> std::io::Result<Arc<Pinger>> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        socket.bind(&SocketAddr::new(source.into(), 0).into())?;
        // The receiving thread wakes this often to notice a stop.
        socket.set_read_timeout(Some(Duration::from_millis(250)))?;
        Ok(Arc::new(Pinger {
            socket,
            stopped: Default::default(),
            identifier: (std::process::id() & 0xffff) as u16,
            in_flight: Mutex::new(HashMap::new()),
            next_seq: Mutex::new(0),
            health: Mutex::new(HashMap::new()),
        }))
    }

    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps health state for exactly these targets; returns whether a
    /// new one came, which the caller probes at once rather than a whole
    /// interval later.
    pub fn set_targets(&self, targets: &[Ipv4Addr]) -> bool {
        let mut health = self.health.lock();
        health.retain(|ip, _| targets.contains(ip));
        let before = health.len();
        for ip in targets {
            health.entry(*ip).or_default();
        }
        health.len() > before
    }

    /// Sends one probe to every target.
    pub fn probe_all(&self, max_lost: u32) {
        let targets: Vec<Ipv4Addr> = self.health.lock().keys().copied().collect();
        let now = Instant::now();
        for target in targets {
            let seq = {
                let mut next = self.next_seq.lock();
                *next = next.wrapping_add(1);
                *next
            };
            if let Some(h) = self.health.lock().get_mut(&target) {
                h.probe_sent(seq, now, max_lost);
            }
            self.in_flight.lock().insert(seq, target);
            let packet = echo_request(self.identifier, seq);
            let to = SocketAddr::new(target.into(), 0);
            if let Err(e) = self.socket.send_to(&packet, &to.into()) {
                tracing::debug!(%target, error = %e, "health probe not sent");
            }
        }
        // Sequence numbers of lost probes are not kept forever.
        let live: Vec<u16> = self
            .health
            .lock()
            .values()
            .filter_map(|h| h.outstanding.map(|(seq, _)| seq))
            .collect();
        self.in_flight.lock().retain(|seq, _| live.contains(seq));
    }

    /// Receives replies on the calling thread until [`Pinger::stop`].
    pub fn receive(&self) {
        let mut buf = [0u8; 1500];
        while !self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(len) = (&self.socket).read(&mut buf) else {
                continue;
            };
            let bytes = &buf[..len];
            if let Some(seq) = echo_reply_seq(bytes, self.identifier) {
                if let Some(target) = self.in_flight.lock().remove(&seq) {
                    if let Some(h) = self.health.lock().get_mut(&target) {
                        h.reply(seq, Instant::now(), std::time::SystemTime::now());
                    }
                }
            }
        }
    }
}

/// An ICMP echo request with our identifier and `seq`.
fn echo_request(identifier: u16, seq: u16) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = ECHO_REQUEST;
    packet[4..6].copy_from_slice(&identifier.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..16].copy_from_slice(b"strait\0\0");
    let checksum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&checksum.to_be_bytes());
    packet
}

/// The sequence number of an echo reply to us; raw IPv4 sockets hand over
/// the IP header too.
fn echo_reply_seq(packet: &[u8], identifier: u16) -> Option<u16> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(header_len..header_len + 8)?;
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    (icmp[0] == ECHO_REPLY && id == identifier).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn connects_on_first_reply_and_fails_after_max_lost() {
        let start = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.status(), Status::Connecting);
        h.probe_sent(1, start, 3);
        assert_eq!(
            h.reply(1, start + Duration::from_millis(2), SystemTime::now()),
            Some(Duration::from_millis(2))
        );
        assert_eq!(h.status(), Status::Connected);
        for seq in 2..=4 {
            h.probe_sent(seq, start + Duration::from_secs(seq.into()), 3);
        }
        assert_eq!(h.status(), Status::Connected, "two lost so far");
        h.probe_sent(5, start + Duration::from_secs(5), 3);
        assert_eq!(h.status(), Status::Error);
        assert!(h.message("10.2.0.1".parse().unwrap()).contains("3 probes"));
        h.reply(
            5,
            start + Duration::from_secs(5) + Duration::from_millis(4),
            SystemTime::now(),
        );
        assert_eq!(h.status(), Status::Connected);
    }

    #[test]
    fn stale_replies_are_ignored_and_latency_is_summarised() {
        let start = Instant::now();
        let mut h = Health::default();
        h.probe_sent(1, start, 5);
        h.probe_sent(2, start + Duration::from_secs(1), 5);
        assert_eq!(
            h.reply(1, start + Duration::from_secs(1), SystemTime::now()),
            None
        );
        h.reply(
            2,
            start + Duration::from_secs(1) + Duration::from_millis(1),
            SystemTime::now(),
        );
        h.probe_sent(3, start + Duration::from_secs(2), 5);
        h.reply(
            3,
            start + Duration::from_secs(2) + Duration::from_millis(3),
            SystemTime::now(),
        );
        let latency = h.latency().unwrap();
        assert_eq!(
            (
                latency.last.as_str(),
                latency.min.as_str(),
                latency.max.as_str()
            ),
            ("3ms", "1ms", "3ms")
        );
        assert_eq!(latency.average, "2ms");
        assert_eq!(latency.std_dev, "1ms");
    }

    #[test]
    fn echo_packets() {
        let request = echo_request(0x1234, 7);
        assert_eq!(internet_checksum(&request), 0, "checksum must verify");
        let mut reply = vec![0x45u8; 20];
        reply.extend_from_slice(&request);
        reply[20] = ECHO_REPLY;
        assert_eq!(echo_reply_seq(&reply, 0x1234), Some(7));
        assert_eq!(echo_reply_seq(&reply, 0x9999), None);
        assert_eq!(echo_reply_seq(&reply[..24], 0x1234), None);
    }
}
