//! The WireGuard device: a TUN interface, a UDP listen socket and the
//! peers, served by two threads: one moves packets both ways, one runs the
//! peers' timers. Configuration comes through [`Device::set`], the same request
//! the UAPI carries, so the gateway and `wg set` drive it alike.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::watch;

use super::allowed_ips::AllowedIps;
use super::config::DeviceConfig;
use super::key::Key;
use super::offload::{self, TcpRun, VnetHdr, VNET_HDR_LEN};
use super::packet::{classify_datagram, ip_addresses, peer_index_of, Datagram};
use super::peer::{keepalive_due, Identity, Peer, Session};
use super::sys::{self, Interest, Received, Wake};
use super::uapi::{DeviceReport, PeerReport, SetRequest};
use super::udp::Listener;

/// Room for the largest IP packet plus WireGuard's 32 bytes of framing.
const BUFFER_LEN: usize = 65_536 + 32;
/// What WireGuard adds to a packet: type, receiver, counter, AEAD tag.
const DATA_OVERHEAD: usize = 32;
/// The type byte of a transport data message.
const DATA_MESSAGE: u8 = 4;
/// The most bytes one UDP GSO send may carry (an IPv4 datagram's limit).
const MAX_GSO_BYTES: usize = 65_535 - 20 - 8;
/// Datagrams per UDP GSO send that every kernel with it accepts.
const MAX_GSO_SEGMENTS: usize = 64;
/// Room for the longest handshake message `Tunn` may write instead.
const HANDSHAKE_ROOM: usize = 148;
/// Reads from one side before the packet thread turns to the other.
const BURST: usize = 16;
/// The virtio header of a packet written whole, checksums complete.
const PLAIN_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
/// How often peer timers run; WireGuard's own timers are in seconds.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("interface name {name:?} is not valid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "{} is missing: load the tun module or give the container the device",
        sys::TUN_PATH
    )]
    TunMissing,
    #[error("creating TUN interface {ifname} needs CAP_NET_ADMIN (run as root)")]
    NotPermitted { ifname: String },
    #[error("interface {ifname} exists and another process holds it")]
    InUse { ifname: String },
    #[error("creating TUN interface {ifname}: {source}")]
    Tun { ifname: String, source: io::Error },
    #[error("UDP listen port {port} is already in use")]
    PortInUse { port: u16 },
    #[error("binding UDP listen port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("starting the device's {what}: {source}")]
    Start {
        what: &'static str,
        source: io::Error,
    },
}

impl DeviceError {
    /// The errno a UAPI client gets for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::PortInUse { .. } => libc::EADDRINUSE,
            DeviceError::InvalidName { .. } => libc::EINVAL,
            _ => libc::EIO,
        }
    }
}

/// Packets dropped, by reason. Read with [`Device::counters`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams that are no WireGuard message (wrong type or size).
    pub invalid_datagrams: AtomicU64,
    /// Well-formed messages that failed authentication, replays included.
    pub rejected_datagrams: AtomicU64,
    /// Handshakes from keys that are no peer of ours.
    pub unknown_peer: AtomicU64,
    /// Decrypted packets whose source is not in the sender's allowed IPs.
    pub source_rejected: AtomicU64,
    /// Packets from the TUN with no peer for their destination.
    pub no_route: AtomicU64,
    /// Packets for a peer whose endpoint is unknown.
    pub no_endpoint: AtomicU64,
    /// Cookie replies sent because handshakes came in too fast.
    pub cookies_sent: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub invalid_datagrams: u64,
    pub rejected_datagrams: u64,
    pub unknown_peer: u64,
    pub source_rejected: u64,
    pub no_route: u64,
    pub no_endpoint: u64,
    pub cookies_sent: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the packet threads read: swapped whole on every configuration
/// change so that the hot path takes no lock to find a peer.
#[derive(Default)]
struct Routing {
    identity: Option<Arc<Identity>>,
    allowed: AllowedIps<Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<Key, Arc<Peer>>,
}

/// Configuration and the live peers built from it; changed under one lock.
struct Control {
    config: DeviceConfig,
    peers: HashMap<Key, Arc<Peer>>,
    next_index: u32,
}

struct Shared {
    name: String,
    tun: File,
    wake: Wake,
    stopping: AtomicBool,
    timer_lock: Mutex<()>,
    timer_wake: Condvar,
    stopped: watch::Sender<bool>,
    control: Mutex<Control>,
    routing: ArcSwap<Routing>,
    listener: ArcSwap<Listener>,
    counters: Counters,
}

pub struct Device {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn validate_name(name: &str) -> Result<(), DeviceError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > IFNAME_MAX {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is a path component"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b'%' || b.is_ascii_whitespace() || b == 0)
    {
        "it contains '/', '%', a space or NUL"
    } else {
        return Ok(());
    };
    Err(DeviceError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

fn bind(port: u16, fwmark: u32) -> Result<Listener, DeviceError> {
    Listener::bind(port, fwmark).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => DeviceError::PortInUse { port },
        _ => DeviceError::Bind { port, source },
    })
}

impl Device {
    /// Creates the TUN interface `name`, binds a UDP port (any free one
    /// until a listen port is set) and starts the packet threads.
    pub fn create(name: &str) -> Result<Device, DeviceError> {
        validate_name(name)?;
        let tun = sys::open_tun(name).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DeviceError::TunMissing,
            io::ErrorKind::PermissionDenied => DeviceError::NotPermitted {
                ifname: name.to_string(),
            },
            _ if source.raw_os_error() == Some(libc::EBUSY) => DeviceError::InUse {
                ifname: name.to_string(),
            },
            _ => DeviceError::Tun {
                ifname: name.to_string(),
                source,
            },
        })?;
        let listener = bind(0, 0)?;
        let start = |what| move |source| DeviceError::Start { what, source };
        let wake = Wake::new().map_err(start("wake-up eventfd"))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            tun,
            wake,
            stopping: AtomicBool::new(false),
            timer_lock: Mutex::new(()),
            timer_wake: Condvar::new(),
            stopped: watch::channel(false).0,
            control: Mutex::new(Control {
                config: DeviceConfig::default(),
                peers: HashMap::new(),
                next_index: first_peer_index(),
            }),
            routing: ArcSwap::from_pointee(Routing::default()),
            listener: ArcSwap::from_pointee(listener),
            counters: Counters::default(),
        });
        let device = Device {
            shared,
            threads: Mutex::new(Vec::new()),
        };
        type Loop = fn(&Shared);
        let loops: [(&str, Loop); 2] = [
            ("packets", Shared::packet_loop),
            ("timers", Shared::timer_loop),
        ];
        for (role, run) in loops {
            let shared = device.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("{}-{role}", device.shared.name))
                .spawn(move || {
                    // Whichever loop ends first, even by a panic, ends the device.
                    let _stop = StopOnExit(&shared);
                    run(&shared);
                })
                .map_err(start("packet threads"))?;
            device.threads.lock().push(handle);
        }
        tracing::info!(
            ifname = name,
            port = device.shared.listener.load().port(),
            "WireGuard device up"
        );
        Ok(device)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Applies a UAPI `set`. Either the whole request takes effect or, when
    /// the new listen port cannot be bound, none of it.
    pub fn set(&self, req: &SetRequest) -> Result<(), DeviceError> {
        self.shared.set(req)
    }

    /// The configuration as last set.
    pub fn config(&self) -> DeviceConfig {
        self.shared.control.lock().config.clone()
    }

    /// What a UAPI `get` answers.
    pub fn report(&self) -> DeviceReport {
        self.shared.report(SystemTime::now())
    }

    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            invalid_datagrams: get(&c.invalid_datagrams),
            rejected_datagrams: get(&c.rejected_datagrams),
            unknown_peer: get(&c.unknown_peer),
            source_rejected: get(&c.source_rejected),
            no_route: get(&c.no_route),
            no_endpoint: get(&c.no_endpoint),
            cookies_sent: get(&c.cookies_sent),
        }
    }

    /// Becomes true when the device stops (a call to [`Device::stop`] or
    /// the interface disappearing).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.shared.stopped.subscribe()
    }

    /// Stops the threads; the interface goes when the device is dropped.
    pub fn stop(&self) {
        self.shared.stop();
        for handle in self.threads.lock().drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

struct StopOnExit<'a>(&'a Shared);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Random start so that indices differ across restarts of the device.
fn first_peer_index() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos ^ std::process::id()) & 0x00ff_ffff
}

impl Shared {
    fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.wake.signal();
        {
            let _guard = self.timer_lock.lock();
            self.timer_wake.notify_all();
        }
        self.stopped.send_replace(true);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn set(&self, req: &SetRequest) -> Result<(), DeviceError> {
        let mut guard = self.control.lock();
        let control = &mut *guard;
        let old = &control.config;
        let next = old.applied(req);

        if next.listen_port != old.listen_port || next.fwmark != old.fwmark {
            let listener = bind(next.listen_port, next.fwmark)?;
            tracing::info!(ifname = %self.name, port = listener.port(), "listening");
            self.listener.swap(Arc::new(listener)).shutdown();
        }

        let key_changed = next.private_key != old.private_key;
        let identity = match next.private_key {
            Some(_) if !key_changed => self.routing.load().identity.clone(),
            Some(key) => Some(Arc::new(Identity::new(key))),
            None => None,
        };

        let mut peers = HashMap::new();
        if let Some(identity) = &identity {
            for wanted in &next.peers {
                let kept = control.peers.get(&wanted.public_key).filter(|_| {
                    old.peer(&wanted.public_key)
                        .is_some_and(|p| p.preshared_key == wanted.preshared_key)
                });
                let peer = match kept {
                    Some(peer) => {
                        if key_changed {
                            peer.set_identity(identity);
                        }
                        peer.clone()
                    }
                    None => {
                        let index = next_free_index(&mut control.next_index, &control.peers);
                        let peer =
                            Peer::new(identity, wanted.public_key, wanted.preshared_key, index);
                        if let Some(endpoint) = wanted.endpoint {
                            peer.set_endpoint(endpoint);
                        }
                        Arc::new(peer)
                    }
                };
                peers.insert(wanted.public_key, peer);
            }
        }

        let mut keepalives_started = Vec::new();
        for change in &req.peers {
            let Some(peer) = peers.get(&change.public_key) else {
                continue;
            };
            if let Some(endpoint) = change.endpoint {
                peer.set_endpoint(endpoint);
            }
        }
        for wanted in &next.peers {
            if let Some(peer) = peers.get(&wanted.public_key) {
                let before = peer.set_persistent_keepalive(wanted.persistent_keepalive);
                if before == 0 && wanted.persistent_keepalive > 0 {
                    keepalives_started.push(peer.clone());
                }
            }
        }

        let mut routing = Routing {
            identity,
            ..Routing::default()
        };
        for wanted in &next.peers {
            if let Some(peer) = peers.get(&wanted.public_key) {
                for net in &wanted.allowed_ips {
                    routing.allowed.insert(*net, peer.clone());
                }
                routing.by_index.insert(peer.index, peer.clone());
                routing.by_key.insert(peer.public_key, peer.clone());
            }
        }
        self.routing.store(Arc::new(routing));
        control.peers = peers;
        control.config = next;
        drop(guard);

        // Like wireguard-go: turning a keepalive on sends one at once, which
        // starts the handshake through any NAT in between.
        let mut buf = vec![0u8; 256];
        for peer in keepalives_started {
            let mut session = peer.session.lock();
            session.last_keepalive = Some(Instant::now());
            let result = session.tunn.encapsulate(&[], &mut buf);
            drop(session);
            self.send_result(&peer, result);
        }
        Ok(())
    }

    fn report(&self, now: SystemTime) -> DeviceReport {
        let control = self.control.lock();
        let config = &control.config;
        let peers = config
            .peers
            .iter()
            .map(|wanted| {
                let live = control.peers.get(&wanted.public_key);
                let (last_handshake, rx_bytes, tx_bytes) =
                    live.map(|p| p.stats(now)).unwrap_or((None, 0, 0));
                PeerReport {
                    public_key: wanted.public_key,
                    preshared_key: wanted.preshared_key,
                    endpoint: live.and_then(|p| p.endpoint()).or(wanted.endpoint),
                    last_handshake: last_handshake
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()),
                    rx_bytes,
                    tx_bytes,
                    persistent_keepalive: wanted.persistent_keepalive,
                    allowed_ips: wanted.allowed_ips.clone(),
                }
            })
            .collect();
        DeviceReport {
            private_key: config.private_key,
            listen_port: self.listener.load().port(),
            fwmark: config.fwmark,
            peers,
        }
    }

    /// Sends what `Tunn` asked to send to the peer's current endpoint.
    fn send_result(&self, peer: &Peer, result: TunnResult<'_>) {
        match result {
            TunnResult::WriteToNetwork(datagram) => self.send_to_peer(peer, datagram),
            TunnResult::Err(e) => tracing::debug!(ifname = %self.name, error = ?e, "peer"),
            _ => {}
        }
    }

    fn send_to_peer(&self, peer: &Peer, datagram: &[u8]) {
        match peer.endpoint() {
            Some(endpoint) => self.send(datagram, endpoint),
            None => bump(&self.counters.no_endpoint),
        }
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = self.listener.load().send_to(datagram, to) {
            tracing::debug!(ifname = %self.name, %to, error = %e, "send failed");
        }
    }

    /// Waits until one of `fds` is ready as asked; false when the device is
    /// stopping.
    fn wait_for(&self, fds: &[(i32, Interest)]) -> bool {
        match sys::wait(fds, self.wake.fd()) {
            Ok(woken) => !woken && !self.is_stopping(),
            Err(e) => {
                tracing::error!(ifname = %self.name, error = %e, "poll failed");
                false
            }
        }
    }

    /// Moves packets both ways on one thread: what the TUN has, then what
    /// the socket has, a burst of each in turn, and waits on both when
    /// neither has more. A reply the kernel makes to a packet written to
    /// the TUN is sent without waking another thread, and no lock is ever
    /// contended between the directions.
    fn packet_loop(&self) {
        let mut read = vec![0u8; VNET_HDR_LEN + BUFFER_LEN];
        let mut batch = SendBatch::new();
        let mut inbound = Inbound::new();
        let mut listener = self.listener.load_full();
        while !self.is_stopping() {
            if self.listener_replaced(&listener) {
                listener = self.listener.load_full();
            }
            let tun = match self.drain_tun(&mut read, &mut batch) {
                Some(drained) => drained,
                None => return,
            };
            let udp = self.drain_udp(&listener, &mut inbound);
            if tun == Drained::More || udp == Drained::More || self.listener_replaced(&listener) {
                continue;
            }
            let socket = listener.socket().as_raw_fd();
            let both = [
                (self.tun.as_raw_fd(), Interest::Readable),
                (socket, Interest::Readable),
            ];
            if !self.wait_for(&both) {
                return;
            }
        }
    }

    /// Reads and encrypts up to a burst of what the TUN has queued and sends
    /// it in batches; `None` when the TUN is gone.
    fn drain_tun(&self, read: &mut [u8], batch: &mut SendBatch) -> Option<Drained> {
        let mut drained = Drained::More;
        for _ in 0..BURST {
            match (&self.tun).read(read) {
                Ok(len) => self.send_from_tun(&mut read[..len], batch),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = Drained::Empty;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(ifname = %self.name, error = %e, "TUN interface gone");
                    return None;
                }
            }
        }
        self.flush(batch);
        Some(drained)
    }

    /// Receives and decrypts up to a burst of what the socket has queued.
    fn drain_udp(&self, listener: &Listener, inbound: &mut Inbound) -> Drained {
        for _ in 0..BURST {
            match listener.recv_segments(&mut inbound.datagrams) {
                // A replaced socket is shut down: it reads as empty.
                Ok(received) if received.len == 0 && self.listener_replaced(listener) => {
                    return Drained::Empty
                }
                Ok(received) => self.receive(received, inbound),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Empty,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; the
                    // socket is still good.
                    tracing::trace!(ifname = %self.name, error = %e, "recv");
                }
            }
        }
        Drained::More
    }

    /// Cryptokey routing: the peer owning the destination encrypts the
    /// packet, or each segment of a super-packet, under one lock, into the
    /// batch.
    fn send_from_tun(&self, read: &mut [u8], batch: &mut SendBatch) {
        let Some(vnet) = VnetHdr::parse(read) else {
            return;
        };
        let packet = &mut read[VNET_HDR_LEN..];
        let Some((_, destination)) = ip_addresses(packet) else {
            return;
        };
        let routing = self.routing.load();
        let Some(peer) = routing.allowed.lookup(destination) else {
            bump(&self.counters.no_route);
            return;
        };
        if !batch.is_for(peer) {
            self.flush(batch);
            batch.peer = Some(peer.clone());
        }
        let mut session = peer.session.lock();
        let split = offload::for_each_segment(&vnet, packet, |segment| {
            let datagram_len = segment.len() + DATA_OVERHEAD;
            if !batch.can_take(datagram_len) {
                MutexGuard::unlocked(&mut session, || self.flush(batch));
            }
            match session.tunn.encapsulate(segment, batch.room()) {
                TunnResult::WriteToNetwork(datagram)
                    if datagram.len() == datagram_len && datagram[0] == DATA_MESSAGE =>
                {
                    batch.commit(datagram_len)
                }
                // No session yet: the packet waits inside `Tunn` and this
                // is the handshake initiation.
                TunnResult::WriteToNetwork(handshake) => self.send_to_peer(peer, handshake),
                TunnResult::Err(e) => tracing::debug!(ifname = %self.name, error = ?e, "peer"),
                _ => {}
            }
        });
        drop(session);
        if let Err(e) = split {
            tracing::debug!(ifname = %self.name, error = ?e, "TUN packet dropped");
        }
    }

    /// Sends the batch to its peer's endpoint, waiting while the socket's
    /// buffer is full rather than dropping a whole burst.
    fn flush(&self, batch: &mut SendBatch) {
        let Some(out) = batch.take() else {
            return;
        };
        let Some(endpoint) = out.peer.endpoint() else {
            self.counters
                .no_endpoint
                .fetch_add(out.count as u64, Ordering::Relaxed);
            return;
        };
        let listener = self.listener.load();
        let mut rest = out.datagrams;
        while !rest.is_empty() {
            match listener.send_segments(rest, out.stride, endpoint) {
                Ok(sent) => rest = &rest[sent..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let socket = listener.socket().as_raw_fd();
                    if !self.wait_for(&[(socket, Interest::Writable)]) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(ifname = %self.name, to = %endpoint, error = %e, "send failed");
                    return;
                }
            }
        }
    }

    fn listener_replaced(&self, current: &Listener) -> bool {
        !std::ptr::eq(current, &**self.listener.load())
    }

    /// Authenticates and decrypts a datagram or a run of them (one sender),
    /// taking each peer's session lock once for consecutive datagrams of
    /// that peer, then hands what decrypted to the TUN.
    fn receive(&self, received: Received, inbound: &mut Inbound) {
        let Inbound {
            datagrams,
            plain,
            control,
            delivered,
            headers,
        } = inbound;
        if received.len == 0 {
            bump(&self.counters.invalid_datagrams);
            return;
        }
        let from = received.from;
        let routing = self.routing.load();
        let mut locked: Option<(&Arc<Peer>, MutexGuard<Session>)> = None;
        let mut used = 0;
        delivered.clear();
        let segment = received.segment.unwrap_or(received.len);
        for datagram in datagrams[..received.len].chunks(segment) {
            let kind = classify_datagram(datagram);
            let peer = match kind {
                Datagram::Invalid => {
                    bump(&self.counters.invalid_datagrams);
                    continue;
                }
                Datagram::HandshakeInitiation => {
                    match self.initiator(&routing, datagram, from, control) {
                        Some(peer) => peer,
                        None => continue,
                    }
                }
                Datagram::HandshakeResponse { receiver }
                | Datagram::CookieReply { receiver }
                | Datagram::Data { receiver } => {
                    let index = peer_index_of(receiver);
                    // A run of datagrams is nearly always one peer's.
                    let current = locked.as_ref().map(|(peer, _)| *peer);
                    match current
                        .filter(|peer| peer.index == index)
                        .or_else(|| routing.by_index.get(&index))
                    {
                        Some(peer) => peer,
                        None => {
                            bump(&self.counters.rejected_datagrams);
                            continue;
                        }
                    }
                }
            };
            if !locked.as_ref().is_some_and(|(p, _)| Arc::ptr_eq(p, peer)) {
                // One session lock at a time.
                drop(locked.take());
                locked = Some((peer, peer.session.lock()));
            }
            let session = &mut locked.as_mut().expect("locked above").1;
            // Data decrypts into the plaintext buffer, packets back to back;
            // handshakes use their own buffer, which their replies and the
            // packets they release need whole.
            let out = match kind {
                Datagram::Data { .. } => &mut plain[used..],
                _ => &mut control[..],
            };
            // (authenticated, length and source of a decrypted packet)
            let (authenticated, decrypted) = match session.tunn.decapsulate(
                Some(from.ip()),
                datagram,
                out,
            ) {
                TunnResult::WriteToNetwork(reply) => {
                    self.send(reply, from);
                    // A completed handshake releases the packets queued for it.
                    while let TunnResult::WriteToNetwork(queued) =
                        session.tunn.decapsulate(None, &[], &mut control[..])
                    {
                        self.send(queued, from);
                    }
                    (true, None)
                }
                TunnResult::WriteToTunnelV4(packet, source) => {
                    (true, Some((packet.len(), IpAddr::from(source))))
                }
                TunnResult::WriteToTunnelV6(packet, source) => {
                    (true, Some((packet.len(), IpAddr::from(source))))
                }
                // A keepalive is authenticated data; a cookie reply is not.
                TunnResult::Done => (matches!(kind, Datagram::Data { .. }), None),
                TunnResult::Err(e) => {
                    tracing::trace!(ifname = %self.name, %from, error = ?e, "datagram rejected");
                    bump(&self.counters.rejected_datagrams);
                    (false, None)
                }
            };
            if let Some((len, source)) = decrypted {
                if self.source_allowed(&routing, peer, source) {
                    delivered.push(used..used + len);
                    used += len;
                }
            }
            if authenticated && peer.roam(from) {
                tracing::info!(ifname = %self.name, peer = ?peer.public_key, endpoint = %from, "peer endpoint");
            }
        }
        drop(locked);
        self.write_to_tun(plain, delivered, headers);
    }

    /// The peer a handshake initiation comes from, after the cheap checks
    /// (MAC, load) that guard the Diffie-Hellman needed to find it.
    fn initiator<'r>(
        &self,
        routing: &'r Routing,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
    ) -> Option<&'r Arc<Peer>> {
        let Some(identity) = &routing.identity else {
            bump(&self.counters.rejected_datagrams);
            return None;
        };
        let init = match identity
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, out)
        {
            Ok(Packet::HandshakeInit(init)) => init,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                bump(&self.counters.cookies_sent);
                self.send(cookie, from);
                return None;
            }
            _ => {
                bump(&self.counters.rejected_datagrams);
                return None;
            }
        };
        let half = match parse_handshake_anon(&identity.secret, &identity.public, &init) {
            Ok(half) => half,
            Err(_) => {
                bump(&self.counters.rejected_datagrams);
                return None;
            }
        };
        let peer = routing.by_key.get(&Key(half.peer_static_public));
        if peer.is_none() {
            bump(&self.counters.unknown_peer);
        }
        peer
    }

    /// Whether `source` belongs to the peer that sent the packet.
    fn source_allowed(&self, routing: &Routing, peer: &Arc<Peer>, source: IpAddr) -> bool {
        let owner = routing.allowed.lookup(source);
        let allowed = owner.is_some_and(|owner| Arc::ptr_eq(owner, peer));
        if !allowed {
            bump(&self.counters.source_rejected);
        }
        allowed
    }

    /// Writes decrypted packets to the TUN in order: consecutive segments
    /// of one TCP flow as one super-packet, the rest one by one.
    fn write_to_tun(&self, plain: &[u8], delivered: &[Range<usize>], headers: &mut [u8]) {
        let mut next = 0;
        while next < delivered.len() {
            let mut iov = [IoSlice::new(&[]); offload::MAX_RUN_SEGMENTS + 1];
            let head = &plain[delivered[next].clone()];
            let mut count = 1;
            let mut run = TcpRun::start(head);
            if let Some(run) = run.as_mut() {
                while next + count < delivered.len()
                    && run.try_append(head, &plain[delivered[next + count].clone()])
                {
                    count += 1;
                }
            }
            let iov = match run.filter(|_| count > 1) {
                Some(run) => {
                    let len = run.write_headers(head, headers);
                    iov[0] = IoSlice::new(&headers[..len]);
                    for (slot, range) in iov[1..].iter_mut().zip(&delivered[next..next + count]) {
                        *slot = IoSlice::new(run.payload_of(&plain[range.clone()]));
                    }
                    &iov[..count + 1]
                }
                None => {
                    iov[0] = IoSlice::new(&PLAIN_VNET_HDR);
                    iov[1] = IoSlice::new(head);
                    &iov[..2]
                }
            };
            if let Err(e) = (&self.tun).write_vectored(iov) {
                tracing::debug!(ifname = %self.name, error = %e, "TUN write failed");
            }
            next += count;
        }
    }

    fn timer_loop(&self) {
        let mut out = vec![0u8; BUFFER_LEN];
        loop {
            {
                let mut guard = self.timer_lock.lock();
                if self.is_stopping() {
                    return;
                }
                self.timer_wake.wait_for(&mut guard, TIMER_TICK);
            }
            if self.is_stopping() {
                return;
            }
            let routing = self.routing.load();
            if let Some(identity) = &routing.identity {
                identity.rate_limiter.reset_count();
            }
            let now = Instant::now();
            for peer in routing.by_key.values() {
                let mut session = peer.session.lock();
                let result = session.tunn.update_timers(&mut out);
                if let TunnResult::WriteToNetwork(datagram) = result {
                    self.send_to_peer(peer, datagram);
                }
                if keepalive_due(session.last_keepalive, peer.persistent_keepalive(), now) {
                    session.last_keepalive = Some(now);
                    let result = session.tunn.encapsulate(&[], &mut out);
                    self.send_result(peer, result);
                }
            }
        }
    }
}

/// Whether a side of the packet thread has more queued than it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Empty,
    More,
}

/// Encrypted datagrams for one peer laid back to back, to go out in one
/// UDP GSO send: all of one size but the last, which may be shorter.
struct SendBatch {
    buf: Vec<u8>,
    len: usize,
    stride: usize,
    count: usize,
    /// A shorter datagram came: nothing may follow it.
    closed: bool,
    /// Whom the datagrams are for.
    peer: Option<Arc<Peer>>,
}

/// What a flushed [`SendBatch`] sends.
struct Outgoing<'a> {
    datagrams: &'a [u8],
    stride: usize,
    count: usize,
    peer: &'a Peer,
}

impl SendBatch {
    fn new() -> SendBatch {
        SendBatch {
            buf: vec![0u8; BUFFER_LEN + HANDSHAKE_ROOM],
            len: 0,
            stride: 0,
            count: 0,
            closed: false,
            peer: None,
        }
    }

    fn is_for(&self, peer: &Arc<Peer>) -> bool {
        self.peer.as_ref().is_some_and(|p| Arc::ptr_eq(p, peer))
    }

    /// Whether a datagram of `len` bytes may join; an empty batch takes
    /// anything up to the largest packet.
    fn can_take(&self, len: usize) -> bool {
        self.count == 0
            || (!self.closed
                && len <= self.stride
                && self.count < MAX_GSO_SEGMENTS
                && self.len + len <= MAX_GSO_BYTES)
    }

    /// Where `Tunn` writes the next datagram.
    fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Counts the datagram of `len` bytes just written at [`Self::room`].
    fn commit(&mut self, len: usize) {
        if self.count == 0 {
            self.stride = len;
        } else if len < self.stride {
            self.closed = true;
        }
        self.len += len;
        self.count += 1;
    }

    /// Empties the batch, returning what it held (nothing if empty).
    fn take(&mut self) -> Option<Outgoing<'_>> {
        let count = std::mem::take(&mut self.count);
        let len = std::mem::take(&mut self.len);
        self.closed = false;
        Some(Outgoing {
            datagrams: &self.buf[..len],
            stride: self.stride,
            count,
            peer: self.peer.as_deref().filter(|_| count > 0)?,
        })
    }
}

/// The network-to-TUN thread's buffers, allocated once.
struct Inbound {
    /// What one receive returns: a datagram or a run of them.
    datagrams: Vec<u8>,
    /// The decrypted packets, back to back (each is 32 bytes shorter than
    /// its datagram, so a batch always fits).
    plain: Vec<u8>,
    /// Handshake replies and the packets a handshake releases.
    control: Vec<u8>,
    /// Where each decrypted packet to deliver lies in `plain`.
    delivered: Vec<Range<usize>>,
    /// The virtio and IP/TCP headers of a coalesced packet.
    headers: Vec<u8>,
}

impl Inbound {
    fn new() -> Inbound {
        Inbound {
            datagrams: vec![0u8; BUFFER_LEN],
            plain: vec![0u8; BUFFER_LEN],
            control: vec![0u8; BUFFER_LEN],
            delivered: Vec::with_capacity(2 * MAX_GSO_SEGMENTS),
            headers: vec![0u8; VNET_HDR_LEN + 256],
        }
    }
}

/// The next peer index not in use; indices are 24 bits.
fn next_free_index(next: &mut u32, peers: &HashMap<Key, Arc<Peer>>) -> u32 {
    loop {
        let index = *next & 0x00ff_ffff;
        *next = next.wrapping_add(1);
        if !peers.values().any(|p| p.index == index) {
            return index;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays datagrams of `lens` bytes into a batch the way the packet
    /// thread does (without encrypting), flushing when it must; returns
    /// (stride, count) of each send.
    fn batches(lens: &[usize]) -> Vec<(usize, usize)> {
        let mut batch = SendBatch::new();
        let peer = Arc::new(Peer::new(
            &Identity::new(Key([1; 32])),
            Key([2; 32]),
            None,
            1,
        ));
        batch.peer = Some(peer);
        let mut sent = Vec::new();
        let mut flush = |batch: &mut SendBatch| {
            if let Some(out) = batch.take() {
                assert!(out.datagrams.len() <= MAX_GSO_BYTES || out.count == 1);
                sent.push((out.stride, out.count));
            }
        };
        for &len in lens {
            if !batch.can_take(len) {
                flush(&mut batch);
            }
            assert!(batch.room().len() >= len.max(HANDSHAKE_ROOM));
            batch.commit(len);
        }
        flush(&mut batch);
        sent
    }

    #[test]
    fn send_batches_hold_one_size_then_at_most_one_shorter() {
        // A TSO packet of 48 full segments and a short tail: 45 fit the
        // 64 KB a send may carry.
        let mut lens = vec![1452; 48];
        lens.push(700);
        assert_eq!(batches(&lens), [(1452, 45), (1452, 4)]);
        // A shorter datagram closes the batch; a longer one starts anew.
        assert_eq!(
            batches(&[84, 84, 60, 84, 1452, 84]),
            [(84, 3), (84, 1), (1452, 2)]
        );
        // Small datagrams: at most 64 per send.
        assert_eq!(batches(&[84; 100]), [(84, 64), (84, 36)]);
        // The largest datagram goes alone.
        let largest = BUFFER_LEN - 1;
        assert_eq!(
            batches(&[84, largest, 84]),
            [(84, 1), (largest, 1), (84, 1)]
        );
    }

    #[test]
    fn interface_names() {
        assert!(validate_name("wg0").is_ok());
        assert!(validate_name("strait-gw-abcde").is_ok());
        for bad in ["", "a-name-that-is-too-long", "../x", "a b", "wg%d", ".."] {
            assert!(
                matches!(validate_name(bad), Err(DeviceError::InvalidName { .. })),
                "{bad}"
            );
        }
    }
}
