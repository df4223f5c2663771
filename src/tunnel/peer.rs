//! One peer at run time: its WireGuard session state (boringtun's `Tunn`),
//! where it is now, and its keepalive schedule.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};
use parking_lot::{Mutex, RwLock};

use super::key::Key;

/// The device's own key pair and the handshake limiter tied to it.
pub struct Identity {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub rate_limiter: Arc<RateLimiter>,
}

/// Handshake messages a device accepts per second before it asks senders
/// to prove their address with a cookie. Each message passes the limiter
/// twice (before we spend a Diffie-Hellman on finding its peer, and again
/// inside `Tunn`), so this is twice the effective rate.
const HANDSHAKES_PER_SECOND: u64 = 2 * 100;

impl Identity {
    pub fn new(private_key: Key) -> Identity {
        let secret = StaticSecret::from(private_key.0);
        let public = PublicKey::from(&secret);
        Identity {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            secret,
            public,
        }
    }
}

pub struct Peer {
    pub public_key: Key,
    /// Our session indices for this peer are `index << 8 | n`.
    pub index: u32,
    pub session: Mutex<Session>,
    endpoint: RwLock<Option<SocketAddr>>,
    persistent_keepalive: AtomicU16,
    last_handshake: Mutex<Option<SystemTime>>,
}

pub struct Session {
    pub tunn: Tunn,
    pub last_keepalive: Option<Instant>,
}

impl Peer {
    pub fn new(
        identity: &Identity,
        public_key: Key,
        preshared_key: Option<Key>,
        index: u32,
    ) -> Peer {
        let tunn = Tunn::new(
            identity.secret.clone(),
            PublicKey::from(public_key.0),
            preshared_key.map(|k| k.0),
            // Persistent keepalive is ours (see `keepalive_due`) so that
            // changing it does not cost the session.
            None,
            index,
            Some(identity.rate_limiter.clone()),
        );
        Peer {
            public_key,
            index,
            session: Mutex::new(Session {
                tunn,
                last_keepalive: None,
            }),
            endpoint: RwLock::new(None),
            persistent_keepalive: AtomicU16::new(0),
            last_handshake: Mutex::new(None),
        }
    }

    pub fn set_identity(&self, identity: &Identity) {
        self.session.lock().tunn.set_static_private(
            identity.secret.clone(),
            identity.public,
            Some(identity.rate_limiter.clone()),
        );
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.read()
    }

    pub fn set_endpoint(&self, endpoint: SocketAddr) {
        *self.endpoint.write() = Some(endpoint);
    }

    /// Follows a peer that now writes from another address (roaming). Only
    /// called for authenticated packets.
    pub fn roam(&self, from: SocketAddr) -> bool {
        if self.endpoint() == Some(from) {
            return false;
        }
        self.set_endpoint(from);
        true
    }

    pub fn persistent_keepalive(&self) -> u16 {
        self.persistent_keepalive.load(Ordering::Relaxed)
    }

    /// Returns the previous interval.
    pub fn set_persistent_keepalive(&self, seconds: u16) -> u16 {
        self.persistent_keepalive.swap(seconds, Ordering::Relaxed)
    }

    /// (last handshake, rx bytes, tx bytes) for `wg show`.
    pub fn stats(&self, now: SystemTime) -> (Option<SystemTime>, u64, u64) {
        let (since_handshake, tx, rx, _, _) = self.session.lock().tunn.stats();
        let mut last = self.last_handshake.lock();
        if let Some(ago) = since_handshake {
            *last = now.checked_sub(ago);
        }
        (*last, rx as u64, tx as u64)
    }
}

/// Whether a persistent keepalive is due at `now`.
pub fn keepalive_due(last: Option<Instant>, interval_seconds: u16, now: Instant) -> bool {
    if interval_seconds == 0 {
        return false;
    }
    match last {
        None => true,
        Some(last) => {
            now.saturating_duration_since(last) >= Duration::from_secs(interval_seconds.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_schedule() {
        let start = Instant::now();
        assert!(!keepalive_due(None, 0, start));
        assert!(keepalive_due(None, 10, start));
        assert!(!keepalive_due(
            Some(start),
            10,
            start + Duration::from_secs(9)
        ));
        assert!(keepalive_due(
            Some(start),
            10,
            start + Duration::from_secs(10)
        ));
        assert!(!keepalive_due(
            Some(start),
            0,
            start + Duration::from_secs(100)
        ));
    }
}
