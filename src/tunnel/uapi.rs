//! The cross-platform WireGuard configuration protocol ("UAPI"), as served
//! by wireguard-go on `/var/run/wireguard/IFNAME.sock` and spoken by `wg(8)`.
//! See <https://www.wireguard.com/xplatform/#configuration-protocol>.
//!
//! Pure text in, text out: no sockets here. A request is `get=1` or `set=1`
//! followed by `key=value` lines and a blank line; the answer is the `get`
//! dump (if any) followed by `errno=N` and a blank line.
//!
//! Parsing is strict: every key must be known and every value valid, so a
//! typo is reported instead of silently dropped. What `wg(8)` sends is always
//! accepted, and the error numbers follow wireguard-go so that `wg` prints
//! the same message for the same mistake.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::key::Key;

/// The reply to a successful `set=1`, and the tail of a `get=1` answer.
pub const SET_OK: &str = "errno=0\n\n";

/// One request read from a UAPI client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get,
    Set(SetRequest),
}

/// A `set=1` request. Fields left `None` are not touched on the device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetRequest {
    /// `Some(zero key)` removes the private key.
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    /// `Some(0)` clears the mark.
    pub fwmark: Option<u32>,
    /// Remove every peer before applying `peers`.
    pub replace_peers: bool,
    /// Applied in order; the same public key may appear more than once.
    pub peers: Vec<PeerChange>,
}

/// The lines of a `set=1` that follow one `public_key=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    pub public_key: Key,
    /// Remove the peer; the other fields are then meaningless (wireguard-go
    /// ignores them) and `serialize_set` does not write them.
    pub remove: bool,
    /// Only change the peer if it already exists, never create it.
    pub update_only: bool,
    /// `Some(zero key)` clears the preshared key.
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` disables persistent keepalive.
    pub persistent_keepalive: Option<u16>,
    /// Drop the peer's allowed IPs before adding `allowed_ips`.
    pub replace_allowed_ips: bool,
    /// Each normalised with `trunc()` (host bits cleared).
    pub allowed_ips: Vec<IpNet>,
}

impl PeerChange {
    /// A change that names the peer and does nothing else yet.
    pub fn new(public_key: Key) -> PeerChange {
        PeerChange {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// The answer to `get=1`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceReport {
    /// `None` (or a zero key) is not printed.
    pub private_key: Option<Key>,
    /// 0 (not bound) is not printed, as wireguard-go does.
    pub listen_port: u16,
    /// 0 is not printed.
    pub fwmark: u32,
    pub peers: Vec<PeerReport>,
}

/// One peer in the answer to `get=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub public_key: Key,
    /// `None` (or a zero key) is not printed.
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// Since the UNIX epoch; `None` is printed as 0 seconds, 0 nanoseconds
    /// (and 0/0 reads back as `None`).
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// 0 = disabled.
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

impl PeerReport {
    /// A peer with no traffic, no handshake and no configuration but its key.
    pub fn new(public_key: Key) -> PeerReport {
        PeerReport {
            public_key,
            preshared_key: None,
            endpoint: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
    }
}

/// Why a request or a reply was refused. Line numbers count from 1, the
/// `get=1`/`set=1` line being line 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    #[error("a request starts with get=1 or set=1, not {found:?}")]
    MissingOperation { found: String },
    #[error("line {line}: {key}={value}: only protocol version 1 exists")]
    UnsupportedProtocolVersion {
        line: usize,
        key: String,
        value: String,
    },
    #[error("line {line}: {text:?} is not a key=value line")]
    MalformedLine { line: usize, text: String },
    #[error("line {line}: unknown key {key:?}")]
    UnknownKey { line: usize, key: String },
    #[error("line {line}: {key}={value:?}: {reason}")]
    BadValue {
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("line {line}: {key} belongs to a peer but no public_key came before it")]
    PeerKeyBeforePeer { line: usize, key: String },
    #[error("line {line}: {key} belongs to the device and must come before the first public_key")]
    DeviceKeyAfterPeer { line: usize, key: String },
    #[error("line {line}: get=1 takes no arguments, found {text:?}")]
    GetWithArguments { line: usize, text: String },
    #[error("the message ends without the blank line that terminates it")]
    Truncated,
    #[error("line {line}: unexpected data after the end of the message")]
    TrailingData { line: usize },
    #[error("the reply has no errno line")]
    MissingErrno,
    #[error("the device answered errno={errno}")]
    RemoteErrno { errno: i32 },
}

impl UapiError {
    /// The positive errno to report for this error. wireguard-go answers
    /// EINVAL for any bad key or value and EPROTO when the text is not the
    /// protocol at all; we keep its choices so `wg` says the same thing.
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::UnsupportedProtocolVersion { .. }
            | UapiError::UnknownKey { .. }
            | UapiError::BadValue { .. }
            | UapiError::PeerKeyBeforePeer { .. }
            | UapiError::DeviceKeyAfterPeer { .. }
            | UapiError::GetWithArguments { .. } => libc::EINVAL,
            UapiError::MissingOperation { .. }
            | UapiError::MalformedLine { .. }
            | UapiError::Truncated
            | UapiError::TrailingData { .. }
            | UapiError::MissingErrno => libc::EPROTO,
            UapiError::RemoteErrno { errno } => *errno,
        }
    }
}

/// The reply to a failed request. wireguard-go prints the errno negated
/// (`errno=-22`) and `wg(8)` negates it back before `strerror`, so a
/// positive number here would make `wg` print "Unknown error -22".
pub fn serialize_error(err: &UapiError) -> String {
    serialize_errno(err.errno())
}

/// The reply to a request that failed for a reason found outside this module
/// (the device refusing a set, say), from the positive errno, negated on the
/// wire like [`serialize_error`].
pub fn serialize_errno(errno: i32) -> String {
    format!("errno={}\n\n", -errno.abs())
}

/// Parse one whole request, including its terminating blank line.
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    let (lines, end) = split_message(text);
    let Some(&(_, op)) = lines.first() else {
        // Nothing at all arrived, or a lone blank line.
        end?;
        return Err(UapiError::MissingOperation {
            found: String::new(),
        });
    };
    let request = match op.split_once('=') {
        Some(("get", "1")) => {
            if let Some(&(line, text)) = lines.get(1) {
                return Err(UapiError::GetWithArguments {
                    line,
                    text: text.to_owned(),
                });
            }
            Request::Get
        }
        Some(("set", "1")) => Request::Set(parse_set(&lines[1..])?),
        Some((key @ ("get" | "set"), value)) => {
            return Err(UapiError::UnsupportedProtocolVersion {
                line: 1,
                key: key.to_owned(),
                value: value.to_owned(),
            })
        }
        _ => {
            return Err(UapiError::MissingOperation {
                found: op.to_owned(),
            })
        }
    };
    // Errors in complete lines come first; a missing terminator only counts
    // once everything before it was fine.
    end?;
    Ok(request)
}

/// The text `wg(8)` sends for this change, `set=1` through the blank line.
pub fn serialize_set(req: &SetRequest) -> String {
    let mut out = String::from("set=1\n");
    if let Some(key) = &req.private_key {
        put(&mut out, "private_key", key.to_hex());
    }
    if let Some(port) = req.listen_port {
        put(&mut out, "listen_port", port);
    }
    if let Some(mark) = req.fwmark {
        put(&mut out, "fwmark", mark);
    }
    if req.replace_peers {
        put(&mut out, "replace_peers", "true");
    }
    for peer in &req.peers {
        put(&mut out, "public_key", peer.public_key.to_hex());
        if peer.remove {
            // Like wg(8): nothing else matters for a peer being removed.
            put(&mut out, "remove", "true");
            continue;
        }
        // First, so that a peer this would create is never touched before
        // wireguard-go learns it must not exist.
        if peer.update_only {
            put(&mut out, "update_only", "true");
        }
        if let Some(key) = &peer.preshared_key {
            put(&mut out, "preshared_key", key.to_hex());
        }
        if let Some(endpoint) = peer.endpoint {
            put(&mut out, "endpoint", endpoint);
        }
        if let Some(interval) = peer.persistent_keepalive {
            put(&mut out, "persistent_keepalive_interval", interval);
        }
        if peer.replace_allowed_ips {
            put(&mut out, "replace_allowed_ips", "true");
        }
        for net in &peer.allowed_ips {
            put(&mut out, "allowed_ip", net);
        }
    }
    out.push('\n');
    out
}

/// The whole answer to `get=1`, ending in `errno=0` and the blank line, in
/// the order wireguard-go prints it.
pub fn serialize_report(report: &DeviceReport) -> String {
    let mut out = String::new();
    if let Some(key) = report.private_key.filter(|k| !k.is_zero()) {
        put(&mut out, "private_key", key.to_hex());
    }
    if report.listen_port != 0 {
        put(&mut out, "listen_port", report.listen_port);
    }
    if report.fwmark != 0 {
        put(&mut out, "fwmark", report.fwmark);
    }
    for peer in &report.peers {
        put(&mut out, "public_key", peer.public_key.to_hex());
        if let Some(key) = peer.preshared_key.filter(|k| !k.is_zero()) {
            put(&mut out, "preshared_key", key.to_hex());
        }
        put(&mut out, "protocol_version", 1);
        if let Some(endpoint) = peer.endpoint {
            put(&mut out, "endpoint", endpoint);
        }
        let handshake = peer.last_handshake.unwrap_or_default();
        put(&mut out, "last_handshake_time_sec", handshake.as_secs());
        put(
            &mut out,
            "last_handshake_time_nsec",
            handshake.subsec_nanos(),
        );
        put(&mut out, "tx_bytes", peer.tx_bytes);
        put(&mut out, "rx_bytes", peer.rx_bytes);
        put(
            &mut out,
            "persistent_keepalive_interval",
            peer.persistent_keepalive,
        );
        for net in &peer.allowed_ips {
            // The allowed-IPs table only ever holds masked prefixes.
            put(&mut out, "allowed_ip", net.trunc());
        }
    }
    out.push_str(SET_OK);
    out
}

/// Read back the answer to `get=1`. A nonzero errno becomes
/// [`UapiError::RemoteErrno`] with the positive number, whichever sign the
/// device printed it with.
pub fn parse_report(text: &str) -> Result<DeviceReport, UapiError> {
    let (lines, end) = split_message(text);
    let mut report = DeviceReport::default();
    // Handshake seconds and nanoseconds arrive on separate lines.
    let mut handshakes: Vec<(u64, u32)> = Vec::new();
    let mut errno = None;
    for (index, &(line, text)) in lines.iter().enumerate() {
        let field = Field::split(line, text)?;
        match field.key {
            "errno" => {
                // Always the last line: anything after it is not ours.
                if let Some(&(line, _)) = lines.get(index + 1) {
                    return Err(UapiError::TrailingData { line });
                }
                errno = Some(field.errno()?);
            }
            "public_key" => {
                report.peers.push(PeerReport::new(field.key_value()?));
                handshakes.push((0, 0));
            }
            "private_key" | "listen_port" | "fwmark" => {
                if !report.peers.is_empty() {
                    return Err(field.device_key_after_peer());
                }
                match field.key {
                    "private_key" => {
                        report.private_key = Some(field.key_value()?).filter(|k| !k.is_zero())
                    }
                    "listen_port" => report.listen_port = field.number()?,
                    _ => report.fwmark = field.number()?,
                }
            }
            "preshared_key"
            | "protocol_version"
            | "endpoint"
            | "last_handshake_time_sec"
            | "last_handshake_time_nsec"
            | "tx_bytes"
            | "rx_bytes"
            | "persistent_keepalive_interval"
            | "allowed_ip" => {
                let (Some(peer), Some(handshake)) =
                    (report.peers.last_mut(), handshakes.last_mut())
                else {
                    return Err(field.peer_key_before_peer());
                };
                match field.key {
                    "preshared_key" => {
                        // wireguard-go prints zeroes for "no preshared key".
                        peer.preshared_key = Some(field.key_value()?).filter(|k| !k.is_zero())
                    }
                    "protocol_version" => field.protocol_version()?,
                    "endpoint" => peer.endpoint = Some(field.endpoint()?),
                    "last_handshake_time_sec" => handshake.0 = field.number()?,
                    "last_handshake_time_nsec" => {
                        let nanos: u32 = field.number()?;
                        if nanos >= 1_000_000_000 {
                            return Err(field.bad("nanoseconds must be below one second"));
                        }
                        handshake.1 = nanos;
                    }
                    "tx_bytes" => peer.tx_bytes = field.number()?,
                    "rx_bytes" => peer.rx_bytes = field.number()?,
                    "persistent_keepalive_interval" => {
                        peer.persistent_keepalive = field.number()?
                    }
                    _ => peer.allowed_ips.push(field.allowed_ip()?),
                }
            }
            _ => return Err(field.unknown_key()),
        }
    }
    end?;
    match errno {
        None => Err(UapiError::MissingErrno),
        Some(0) => {
            for (peer, (secs, nanos)) in report.peers.iter_mut().zip(handshakes) {
                peer.last_handshake = (secs != 0 || nanos != 0).then(|| Duration::new(secs, nanos));
            }
            Ok(report)
        }
        Some(errno) => Err(UapiError::RemoteErrno { errno }),
    }
}

/// Parse the lines of a `set=1` after the operation line.
fn parse_set(lines: &[(usize, &str)]) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for &(line, text) in lines {
        let field = Field::split(line, text)?;
        match field.key {
            "public_key" => req.peers.push(PeerChange::new(field.key_value()?)),
            "private_key" | "listen_port" | "fwmark" | "replace_peers" => {
                if !req.peers.is_empty() {
                    return Err(field.device_key_after_peer());
                }
                match field.key {
                    // A zero key is allowed: it removes the private key.
                    "private_key" => req.private_key = Some(field.key_value()?),
                    "listen_port" => req.listen_port = Some(field.number()?),
                    "fwmark" => req.fwmark = Some(field.number()?),
                    _ => req.replace_peers = field.only_true()?,
                }
            }
            "update_only"
            | "remove"
            | "preshared_key"
            | "endpoint"
            | "persistent_keepalive_interval"
            | "replace_allowed_ips"
            | "allowed_ip"
            | "protocol_version" => {
                let Some(peer) = req.peers.last_mut() else {
                    return Err(field.peer_key_before_peer());
                };
                match field.key {
                    "update_only" => peer.update_only = field.only_true()?,
                    "remove" => peer.remove = field.only_true()?,
                    "preshared_key" => peer.preshared_key = Some(field.key_value()?),
                    "endpoint" => peer.endpoint = Some(field.endpoint()?),
                    "persistent_keepalive_interval" => {
                        peer.persistent_keepalive = Some(field.number()?)
                    }
                    "replace_allowed_ips" => {
                        peer.replace_allowed_ips = field.only_true()?;
                        // wireguard-go applies lines in order: a replace
                        // also drops the allowed IPs added just before it.
                        peer.allowed_ips.clear();
                    }
                    "allowed_ip" => {
                        if field.value.starts_with('-') {
                            // Newer wg(8) sends "-prefix" for `allowed-ips -x`;
                            // PeerChange cannot say "remove one", so refuse
                            // rather than add the prefix instead.
                            return Err(field.bad("removing a single allowed IP is not supported"));
                        }
                        peer.allowed_ips.push(field.allowed_ip()?);
                    }
                    // Says nothing about the peer once known to be 1.
                    _ => field.protocol_version()?,
                }
            }
            _ => return Err(field.unknown_key()),
        }
    }
    Ok(req)
}

/// Split a message into its numbered lines up to the blank line that ends it.
/// The second half says whether that blank line was there and was the end
/// of the text; it is kept apart so that errors in complete lines, which a
/// streaming server would see first, can be reported first.
fn split_message(text: &str) -> (Vec<(usize, &str)>, Result<(), UapiError>) {
    let mut lines = Vec::new();
    let mut rest = text;
    let mut number = 0;
    loop {
        number += 1;
        let Some(end) = rest.find('\n') else {
            return (lines, Err(UapiError::Truncated));
        };
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.is_empty() {
            let end = if rest.is_empty() {
                Ok(())
            } else {
                Err(UapiError::TrailingData { line: number + 1 })
            };
            return (lines, end);
        }
        lines.push((number, line));
    }
}

/// Append one `key=value` line.
fn put(out: &mut String, key: &str, value: impl std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{key}={value}");
}

/// One `key=value` line, with what is needed to say what is wrong with it.
struct Field<'a> {
    line: usize,
    key: &'a str,
    value: &'a str,
}

impl<'a> Field<'a> {
    fn split(line: usize, text: &'a str) -> Result<Field<'a>, UapiError> {
        match text.split_once('=') {
            Some((key, value)) => Ok(Field { line, key, value }),
            None => Err(UapiError::MalformedLine {
                line,
                text: text.to_owned(),
            }),
        }
    }

    fn bad(&self, reason: impl Into<String>) -> UapiError {
        UapiError::BadValue {
            line: self.line,
            key: self.key.to_owned(),
            value: self.value.to_owned(),
            reason: reason.into(),
        }
    }

    fn unknown_key(&self) -> UapiError {
        UapiError::UnknownKey {
            line: self.line,
            key: self.key.to_owned(),
        }
    }

    fn peer_key_before_peer(&self) -> UapiError {
        UapiError::PeerKeyBeforePeer {
            line: self.line,
            key: self.key.to_owned(),
        }
    }

    fn device_key_after_peer(&self) -> UapiError {
        UapiError::DeviceKeyAfterPeer {
            line: self.line,
            key: self.key.to_owned(),
        }
    }

    fn key_value(&self) -> Result<Key, UapiError> {
        Key::from_hex(self.value).map_err(|e| self.bad(e.to_string()))
    }

    /// An unsigned decimal. Only digits: Rust's parser would also take a
    /// leading '+', which wireguard-go refuses.
    fn number<T: FromStr>(&self) -> Result<T, UapiError> {
        if self.value.is_empty() || !self.value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad("expected an unsigned decimal number"));
        }
        self.value
            .parse()
            .map_err(|_| self.bad("number out of range"))
    }

    /// The flags (`remove`, `replace_peers`...) have no "false" form.
    fn only_true(&self) -> Result<bool, UapiError> {
        match self.value {
            "true" => Ok(true),
            _ => Err(self.bad("the only accepted value is \"true\"")),
        }
    }

    fn endpoint(&self) -> Result<SocketAddr, UapiError> {
        self.value
            .parse()
            .map_err(|_| self.bad("expected IPv4:port or [IPv6]:port"))
    }

    fn allowed_ip(&self) -> Result<IpNet, UapiError> {
        self.value
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|_| self.bad("expected an address/prefix-length"))
    }

    fn protocol_version(&self) -> Result<(), UapiError> {
        match self.value {
            "1" => Ok(()),
            _ => Err(UapiError::UnsupportedProtocolVersion {
                line: self.line,
                key: self.key.to_owned(),
                value: self.value.to_owned(),
            }),
        }
    }

    /// wireguard-go prints errno negated, the protocol page and older
    /// servers positive: accept both, keep the magnitude.
    fn errno(&self) -> Result<i32, UapiError> {
        let magnitude = self.value.strip_prefix('-').unwrap_or(self.value);
        let field = Field {
            value: magnitude,
            ..*self
        };
        field
            .number::<i32>()
            .map_err(|_| self.bad("expected an errno number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn key(byte: u8) -> Key {
        Key([byte; 32])
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn parse_set_text(text: &str) -> Result<SetRequest, UapiError> {
        match parse_request(text)? {
            Request::Set(req) => Ok(req),
            Request::Get => panic!("{text:?} parsed as get"),
        }
    }

    /// Asserts the error and its errno in one go.
    fn assert_err(result: Result<impl std::fmt::Debug, UapiError>, want: UapiError, errno: i32) {
        let err = result.expect_err("expected an error");
        assert_eq!(err, want);
        assert_eq!(err.errno(), errno, "errno of {want:?}");
    }

    /// BadValue reasons are prose; compare everything else.
    fn assert_bad_value(text: &str, line: usize, key: &str, value: &str) {
        let err = parse_request(text).expect_err(text);
        match &err {
            UapiError::BadValue {
                line: l,
                key: k,
                value: v,
                reason,
            } => {
                assert_eq!((*l, k.as_str(), v.as_str()), (line, key, value), "{text:?}");
                assert!(!reason.is_empty());
            }
            other => panic!("{text:?}: expected BadValue, got {other:?}"),
        }
        assert_eq!(err.errno(), libc::EINVAL);
    }

    fn rich_set() -> SetRequest {
        SetRequest {
            private_key: Some(key(0x11)),
            listen_port: Some(51820),
            fwmark: Some(0x1234),
            replace_peers: true,
            peers: vec![
                PeerChange {
                    preshared_key: Some(key(0x22)),
                    endpoint: Some(addr("192.0.2.1:51820")),
                    persistent_keepalive: Some(25),
                    replace_allowed_ips: true,
                    allowed_ips: vec![net("198.51.100.0/24"), net("2001:db8:1::/48")],
                    ..PeerChange::new(key(0x33))
                },
                PeerChange {
                    update_only: true,
                    preshared_key: Some(Key::default()),
                    endpoint: Some(addr("[2001:db8::1]:443")),
                    persistent_keepalive: Some(0),
                    allowed_ips: vec![net("192.0.2.128/32")],
                    ..PeerChange::new(key(0x44))
                },
                PeerChange {
                    remove: true,
                    ..PeerChange::new(key(0x55))
                },
                PeerChange {
                    replace_allowed_ips: true,
                    ..PeerChange::new(key(0x66))
                },
            ],
        }
    }

    #[test]
    fn set_round_trips() {
        let req = rich_set();
        let text = serialize_set(&req);
        assert!(text.starts_with("set=1\n") && text.ends_with("\n\n"));
        assert_eq!(parse_request(&text), Ok(Request::Set(req)));
    }

    #[test]
    fn set_serializes_in_wg_order() {
        let text = serialize_set(&rich_set());
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "set",
                "private_key",
                "listen_port",
                "fwmark",
                "replace_peers",
                "public_key",
                "preshared_key",
                "endpoint",
                "persistent_keepalive_interval",
                "replace_allowed_ips",
                "allowed_ip",
                "allowed_ip",
                "public_key",
                "update_only",
                "preshared_key",
                "endpoint",
                "persistent_keepalive_interval",
                "allowed_ip",
                "public_key",
                "remove",
                "public_key",
                "replace_allowed_ips",
            ]
        );
        assert!(text.contains("\nendpoint=[2001:db8::1]:443\n"));
        assert!(text.contains(&format!("\npreshared_key={}\n", "0".repeat(64))));
    }

    #[test]
    fn empty_set_round_trips() {
        let req = SetRequest::default();
        assert_eq!(serialize_set(&req), "set=1\n\n");
        assert_eq!(parse_request("set=1\n\n"), Ok(Request::Set(req)));
    }

    #[test]
    fn remove_drops_other_fields_when_serialized() {
        let req = SetRequest {
            peers: vec![PeerChange {
                remove: true,
                endpoint: Some(addr("192.0.2.9:1")),
                ..PeerChange::new(key(1))
            }],
            ..SetRequest::default()
        };
        assert_eq!(
            serialize_set(&req),
            format!("set=1\npublic_key={}\nremove=true\n\n", key(1).to_hex())
        );
    }

    #[test]
    fn get_parses() {
        assert_eq!(parse_request("get=1\n\n"), Ok(Request::Get));
    }

    /// Exactly what wg(8) writes for
    /// `wg set wg0 listen-port 51820 private-key ./priv peer PUB
    ///  endpoint 192.0.2.1:51820 allowed-ips 10.0.0.0/24,fd00::/64
    ///  persistent-keepalive 25` (ipc-uapi.h: endpoint, keepalive, then
    /// replace_allowed_ips, which `allowed-ips` always sets, then the IPs).
    #[test]
    fn parses_what_wg_sends() {
        let private = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
        let public = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33";
        let text = format!(
            "set=1\n\
             private_key={private}\n\
             listen_port=51820\n\
             public_key={public}\n\
             endpoint=192.0.2.1:51820\n\
             persistent_keepalive_interval=25\n\
             replace_allowed_ips=true\n\
             allowed_ip=10.0.0.0/24\n\
             allowed_ip=fd00::/64\n\
             \n"
        );
        let want = SetRequest {
            private_key: Some(Key::from_hex(private).unwrap()),
            listen_port: Some(51820),
            fwmark: None,
            replace_peers: false,
            peers: vec![PeerChange {
                endpoint: Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    51820,
                )),
                persistent_keepalive: Some(25),
                replace_allowed_ips: true,
                allowed_ips: vec![net("10.0.0.0/24"), net("fd00::/64")],
                ..PeerChange::new(Key::from_hex(public).unwrap())
            }],
        };
        assert_eq!(parse_set_text(&text), Ok(want.clone()));
        assert_eq!(serialize_set(&want), text);
    }

    #[test]
    fn parses_wg_syncconf_style_request() {
        // `wg setconf` sends replace_peers, a zero key to drop the private
        // key, fwmark=0 to clear the mark, and a protocol_version line from
        // other clients is accepted.
        let text = format!(
            "set=1\nprivate_key={zero}\nfwmark=0\nreplace_peers=true\n\
             public_key={pk}\nprotocol_version=1\npreshared_key={zero}\n\
             persistent_keepalive_interval=0\nreplace_allowed_ips=true\n\n",
            zero = "0".repeat(64),
            pk = key(7).to_hex()
        );
        let req = parse_set_text(&text).unwrap();
        assert_eq!(req.private_key, Some(Key::default()));
        assert_eq!(req.fwmark, Some(0));
        assert!(req.replace_peers);
        let peer = &req.peers[0];
        assert_eq!(peer.preshared_key, Some(Key::default()));
        assert_eq!(peer.persistent_keepalive, Some(0));
        assert!(peer.replace_allowed_ips && peer.allowed_ips.is_empty());
    }

    #[test]
    fn allowed_ips_are_truncated() {
        let text = format!(
            "set=1\npublic_key={}\nallowed_ip=192.0.2.77/24\nallowed_ip=2001:db8::dead:beef/32\n\n",
            key(1).to_hex()
        );
        let req = parse_set_text(&text).unwrap();
        assert_eq!(
            req.peers[0].allowed_ips,
            [net("192.0.2.0/24"), net("2001:db8::/32")]
        );
    }

    #[test]
    fn replace_allowed_ips_drops_earlier_lines() {
        let text = format!(
            "set=1\npublic_key={}\nallowed_ip=192.0.2.0/24\nreplace_allowed_ips=true\nallowed_ip=198.51.100.0/24\n\n",
            key(1).to_hex()
        );
        let peer = &parse_set_text(&text).unwrap().peers[0];
        assert!(peer.replace_allowed_ips);
        assert_eq!(peer.allowed_ips, [net("198.51.100.0/24")]);
    }

    #[test]
    fn repeated_peers_stay_in_order() {
        let text = format!(
            "set=1\npublic_key={a}\nremove=true\npublic_key={b}\npublic_key={a}\nendpoint=192.0.2.2:1\n\n",
            a = key(1).to_hex(),
            b = key(2).to_hex()
        );
        let req = parse_set_text(&text).unwrap();
        let keys: Vec<Key> = req.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, [key(1), key(2), key(1)]);
        assert!(req.peers[0].remove && !req.peers[2].remove);
    }

    #[test]
    fn uppercase_hex_keys_are_accepted() {
        // Go's hex decoder, which wireguard-go uses, takes both cases.
        let text = format!("set=1\npublic_key={}\n\n", "AB".repeat(32));
        assert_eq!(
            parse_set_text(&text).unwrap().peers[0].public_key,
            key(0xab)
        );
    }

    fn rich_report() -> DeviceReport {
        DeviceReport {
            private_key: Some(key(0x11)),
            listen_port: 51820,
            fwmark: 42,
            peers: vec![
                PeerReport {
                    preshared_key: Some(key(0x22)),
                    endpoint: Some(SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                        51820,
                    )),
                    last_handshake: Some(Duration::new(1_700_000_000, 123_456_789)),
                    rx_bytes: 1 << 40,
                    tx_bytes: u64::MAX,
                    persistent_keepalive: 25,
                    allowed_ips: vec![net("2001:db8::/32"), net("192.0.2.0/24")],
                    ..PeerReport::new(key(0x33))
                },
                PeerReport {
                    endpoint: Some(addr("198.51.100.7:65535")),
                    rx_bytes: 148,
                    tx_bytes: 92,
                    ..PeerReport::new(key(0x44))
                },
                PeerReport::new(key(0x55)),
            ],
        }
    }

    #[test]
    fn report_round_trips() {
        let report = rich_report();
        let text = serialize_report(&report);
        assert!(text.ends_with("\nerrno=0\n\n"));
        assert_eq!(parse_report(&text), Ok(report));
    }

    #[test]
    fn empty_report_round_trips() {
        assert_eq!(serialize_report(&DeviceReport::default()), SET_OK);
        assert_eq!(parse_report(SET_OK), Ok(DeviceReport::default()));
    }

    #[test]
    fn report_is_printed_like_wireguard_go() {
        let report = DeviceReport {
            private_key: Some(key(0x11)),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerReport {
                endpoint: Some(addr("[2001:db8::1]:51820")),
                last_handshake: Some(Duration::new(5, 6)),
                rx_bytes: 7,
                tx_bytes: 8,
                persistent_keepalive: 25,
                allowed_ips: vec![net("192.0.2.0/24"), net("2001:db8::/64")],
                ..PeerReport::new(key(0x33))
            }],
        };
        let want = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nprotocol_version=1\n\
             endpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=5\n\
             last_handshake_time_nsec=6\ntx_bytes=8\nrx_bytes=7\n\
             persistent_keepalive_interval=25\nallowed_ip=192.0.2.0/24\n\
             allowed_ip=2001:db8::/64\nerrno=0\n\n",
            key(0x11).to_hex(),
            key(0x33).to_hex()
        );
        assert_eq!(serialize_report(&report), want);
    }

    #[test]
    fn report_with_zero_preshared_key_reads_as_none() {
        // wireguard-go always prints preshared_key, zeroes when unset.
        let text = format!(
            "listen_port=1\npublic_key={}\npreshared_key={}\nprotocol_version=1\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\n\
             rx_bytes=0\npersistent_keepalive_interval=0\nerrno=0\n\n",
            key(3).to_hex(),
            "0".repeat(64)
        );
        let report = parse_report(&text).unwrap();
        assert_eq!(report.peers, [PeerReport::new(key(3))]);
    }

    #[test]
    fn error_reply_is_negative_errno() {
        let err = UapiError::UnknownKey {
            line: 2,
            key: "x".into(),
        };
        assert_eq!(
            serialize_error(&err),
            format!("errno=-{}\n\n", libc::EINVAL)
        );
        assert_eq!(SET_OK, "errno=0\n\n");
    }

    // One test per error variant, with its errno.

    #[test]
    fn missing_operation() {
        let text = format!("private_key={}\n\n", key(1).to_hex());
        assert_err(
            parse_request(&text),
            UapiError::MissingOperation {
                found: text.trim_end().into(),
            },
            libc::EPROTO,
        );
        assert_err(
            parse_request("\n"),
            UapiError::MissingOperation { found: "".into() },
            libc::EPROTO,
        );
        assert_err(
            parse_request("getall\n\n"),
            UapiError::MissingOperation {
                found: "getall".into(),
            },
            libc::EPROTO,
        );
    }

    #[test]
    fn unsupported_protocol_version() {
        let text = format!(
            "set=1\npublic_key={}\nprotocol_version=2\n\n",
            key(1).to_hex()
        );
        assert_err(
            parse_request(&text),
            UapiError::UnsupportedProtocolVersion {
                line: 3,
                key: "protocol_version".into(),
                value: "2".into(),
            },
            libc::EINVAL,
        );
        assert_err(
            parse_request("set=2\n\n"),
            UapiError::UnsupportedProtocolVersion {
                line: 1,
                key: "set".into(),
                value: "2".into(),
            },
            libc::EINVAL,
        );
        let report = format!(
            "public_key={}\nprotocol_version=0\nerrno=0\n\n",
            key(1).to_hex()
        );
        assert!(matches!(
            parse_report(&report),
            Err(UapiError::UnsupportedProtocolVersion { line: 2, .. })
        ));
    }

    #[test]
    fn malformed_line() {
        assert_err(
            parse_request("set=1\nlisten_port\n\n"),
            UapiError::MalformedLine {
                line: 2,
                text: "listen_port".into(),
            },
            libc::EPROTO,
        );
        assert!(matches!(
            parse_report("garbage\n\n"),
            Err(UapiError::MalformedLine { line: 1, .. })
        ));
    }

    #[test]
    fn unknown_key() {
        assert_err(
            parse_request("set=1\nlisten_prot=1\n\n"),
            UapiError::UnknownKey {
                line: 2,
                key: "listen_prot".into(),
            },
            libc::EINVAL,
        );
        // Keys of the get answer are not settable.
        let text = format!("set=1\npublic_key={}\nrx_bytes=0\n\n", key(1).to_hex());
        assert_err(
            parse_request(&text),
            UapiError::UnknownKey {
                line: 3,
                key: "rx_bytes".into(),
            },
            libc::EINVAL,
        );
        assert_err(
            parse_report("jc=4\nerrno=0\n\n"),
            UapiError::UnknownKey {
                line: 1,
                key: "jc".into(),
            },
            libc::EINVAL,
        );
    }

    #[test]
    fn bad_values() {
        let pk = key(1).to_hex();
        let peer = |line: &str| format!("set=1\npublic_key={pk}\n{line}\n\n");
        assert_bad_value("set=1\nlisten_port=65536\n\n", 2, "listen_port", "65536");
        assert_bad_value("set=1\nlisten_port=+1\n\n", 2, "listen_port", "+1");
        assert_bad_value("set=1\nlisten_port=\n\n", 2, "listen_port", "");
        assert_bad_value("set=1\nfwmark=-1\n\n", 2, "fwmark", "-1");
        assert_bad_value("set=1\nfwmark=4294967296\n\n", 2, "fwmark", "4294967296");
        assert_bad_value(
            "set=1\nreplace_peers=false\n\n",
            2,
            "replace_peers",
            "false",
        );
        assert_bad_value("set=1\nprivate_key=abcd\n\n", 2, "private_key", "abcd");
        let not_hex = "zz".repeat(32);
        assert_bad_value(
            &format!("set=1\npublic_key={not_hex}\n\n"),
            2,
            "public_key",
            &not_hex,
        );
        assert_bad_value(&peer("update_only=1"), 3, "update_only", "1");
        assert_bad_value(&peer("remove=yes"), 3, "remove", "yes");
        assert_bad_value(
            &peer("replace_allowed_ips=TRUE"),
            3,
            "replace_allowed_ips",
            "TRUE",
        );
        assert_bad_value(&peer("preshared_key=00"), 3, "preshared_key", "00");
        assert_bad_value(&peer("endpoint=192.0.2.1"), 3, "endpoint", "192.0.2.1");
        assert_bad_value(
            &peer("endpoint=2001:db8::1:51820"),
            3,
            "endpoint",
            "2001:db8::1:51820",
        );
        assert_bad_value(
            &peer("endpoint=example.com:51820"),
            3,
            "endpoint",
            "example.com:51820",
        );
        assert_bad_value(
            &peer("persistent_keepalive_interval=70000"),
            3,
            "persistent_keepalive_interval",
            "70000",
        );
        assert_bad_value(&peer("allowed_ip=192.0.2.1"), 3, "allowed_ip", "192.0.2.1");
        assert_bad_value(
            &peer("allowed_ip=192.0.2.0/33"),
            3,
            "allowed_ip",
            "192.0.2.0/33",
        );
        assert_bad_value(
            &peer("allowed_ip=-192.0.2.0/24"),
            3,
            "allowed_ip",
            "-192.0.2.0/24",
        );
        // Carriage returns are not stripped: they make the value wrong.
        assert_bad_value("set=1\nlisten_port=1\r\n\n", 2, "listen_port", "1\r");

        let report = format!("public_key={pk}\nlast_handshake_time_nsec=1000000000\nerrno=0\n\n");
        assert!(matches!(
            parse_report(&report),
            Err(UapiError::BadValue { line: 2, .. })
        ));
        assert!(matches!(
            parse_report("errno=abc\n\n"),
            Err(UapiError::BadValue { line: 1, .. })
        ));
    }

    #[test]
    fn peer_key_before_peer() {
        assert_err(
            parse_request("set=1\nendpoint=192.0.2.1:51820\n\n"),
            UapiError::PeerKeyBeforePeer {
                line: 2,
                key: "endpoint".into(),
            },
            libc::EINVAL,
        );
        assert_err(
            parse_report("listen_port=1\nallowed_ip=192.0.2.0/24\nerrno=0\n\n"),
            UapiError::PeerKeyBeforePeer {
                line: 2,
                key: "allowed_ip".into(),
            },
            libc::EINVAL,
        );
    }

    #[test]
    fn device_key_after_peer() {
        let text = format!("set=1\npublic_key={}\nlisten_port=1\n\n", key(1).to_hex());
        assert_err(
            parse_request(&text),
            UapiError::DeviceKeyAfterPeer {
                line: 3,
                key: "listen_port".into(),
            },
            libc::EINVAL,
        );
        let report = format!("public_key={}\nfwmark=1\nerrno=0\n\n", key(1).to_hex());
        assert!(matches!(
            parse_report(&report),
            Err(UapiError::DeviceKeyAfterPeer { line: 2, .. })
        ));
    }

    #[test]
    fn get_with_arguments() {
        assert_err(
            parse_request("get=1\nlisten_port=1\n\n"),
            UapiError::GetWithArguments {
                line: 2,
                text: "listen_port=1".into(),
            },
            libc::EINVAL,
        );
    }

    #[test]
    fn truncated() {
        for text in [
            "",
            "get=1",
            "get=1\n",
            "set=1\nlisten_port=1\n",
            "set=1\nlisten_port=1",
        ] {
            assert_err(parse_request(text), UapiError::Truncated, libc::EPROTO);
        }
        assert_err(
            parse_report("errno=0\n"),
            UapiError::Truncated,
            libc::EPROTO,
        );
        // A bad complete line is what a streaming server would see first.
        assert!(matches!(
            parse_request("set=1\nbogus=1\n"),
            Err(UapiError::UnknownKey { line: 2, .. })
        ));
    }

    #[test]
    fn trailing_data() {
        assert_err(
            parse_request("get=1\n\nget=1\n\n"),
            UapiError::TrailingData { line: 3 },
            libc::EPROTO,
        );
        assert_err(
            parse_report("errno=0\nlisten_port=1\n\n"),
            UapiError::TrailingData { line: 2 },
            libc::EPROTO,
        );
    }

    #[test]
    fn missing_errno() {
        assert_err(
            parse_report("listen_port=51820\n\n"),
            UapiError::MissingErrno,
            libc::EPROTO,
        );
    }

    #[test]
    fn remote_errno() {
        // wireguard-go's sign and the positive one both give the errno.
        for text in ["errno=-22\n\n", "errno=22\n\n"] {
            assert_err(parse_report(text), UapiError::RemoteErrno { errno: 22 }, 22);
        }
        let err = UapiError::RemoteErrno {
            errno: libc::EADDRINUSE,
        };
        assert_eq!(
            serialize_error(&err),
            format!("errno=-{}\n\n", libc::EADDRINUSE)
        );
        assert_eq!(
            serialize_errno(libc::ENOMEM),
            format!("errno=-{}\n\n", libc::ENOMEM)
        );
        assert_err(
            parse_report(&serialize_errno(libc::EIO)),
            UapiError::RemoteErrno { errno: libc::EIO },
            libc::EIO,
        );
    }

    #[test]
    fn serialize_error_reads_back_through_parse_report() {
        let err = UapiError::Truncated;
        assert_err(
            parse_report(&serialize_error(&err)),
            UapiError::RemoteErrno {
                errno: libc::EPROTO,
            },
            libc::EPROTO,
        );
    }
}
