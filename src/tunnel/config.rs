//! The device's configuration as wg(8) sees it, and how a UAPI `set`
//! changes it. Pure: the device applies the result to its runtime.

use std::net::SocketAddr;

use ipnet::IpNet;

use super::key::Key;
use super::uapi::{PeerChange, SetRequest};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    pub private_key: Option<Key>,
    /// What was asked for; 0 means "any free port".
    pub listen_port: u16,
    pub fwmark: u32,
    /// In the order they were added, as `wg show` lists them.
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    /// The endpoint last configured; roaming moves the live one.
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

impl PeerConfig {
    fn new(public_key: Key) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
        }
    }
}

impl DeviceConfig {
    pub fn public_key(&self) -> Option<Key> {
        self.private_key.map(|k| k.public_key())
    }

    pub fn peer(&self, key: &Key) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.public_key == *key)
    }

    /// The configuration after `req`, as wireguard-go would apply it.
    pub fn applied(&self, req: &SetRequest) -> DeviceConfig {
        let mut next = self.clone();
        if let Some(key) = req.private_key {
            next.private_key = (!key.is_zero()).then_some(key);
        }
        if let Some(port) = req.listen_port {
            next.listen_port = port;
        }
        if let Some(mark) = req.fwmark {
            next.fwmark = mark;
        }
        if req.replace_peers {
            next.peers.clear();
        }
        for change in &req.peers {
            next.apply_peer(change);
        }
        // A peer with our own public key can never complete a handshake;
        // wireguard-go keeps it out of the device too.
        if let Some(own) = next.public_key() {
            next.peers.retain(|p| p.public_key != own);
        }
        next
    }

    fn apply_peer(&mut self, change: &PeerChange) {
        let existing = self
            .peers
            .iter()
            .position(|p| p.public_key == change.public_key);
        if change.remove {
            if let Some(i) = existing {
                self.peers.remove(i);
            }
            return;
        }
        let index = match existing {
            Some(i) => i,
            None if change.update_only => return,
            None => {
                self.peers.push(PeerConfig::new(change.public_key));
                self.peers.len() - 1
            }
        };
        // An allowed IP belongs to one peer: giving it to this one takes it
        // from any other.
        for net in &change.allowed_ips {
            for (i, other) in self.peers.iter_mut().enumerate() {
                if i != index {
                    other.allowed_ips.retain(|n| n != net);
                }
            }
        }
        let peer = &mut self.peers[index];
        if let Some(psk) = change.preshared_key {
            peer.preshared_key = (!psk.is_zero()).then_some(psk);
        }
        if let Some(endpoint) = change.endpoint {
            peer.endpoint = Some(endpoint);
        }
        if let Some(interval) = change.persistent_keepalive {
            peer.persistent_keepalive = interval;
        }
        if change.replace_allowed_ips {
            peer.allowed_ips.clear();
        }
        for net in &change.allowed_ips {
            if !peer.allowed_ips.contains(net) {
                peer.allowed_ips.push(*net);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    fn change(k: u8) -> PeerChange {
        PeerChange::new(key(k))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn set_adds_peers_and_device_fields() {
        let req = SetRequest {
            private_key: Some(key(1)),
            listen_port: Some(51820),
            fwmark: Some(7),
            peers: vec![PeerChange {
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                persistent_keepalive: Some(25),
                allowed_ips: vec![net("10.9.0.2/32")],
                ..change(2)
            }],
            ..SetRequest::default()
        };
        let config = DeviceConfig::default().applied(&req);
        assert_eq!(config.private_key, Some(key(1)));
        assert_eq!((config.listen_port, config.fwmark), (51820, 7));
        let peer = config.peer(&key(2)).unwrap();
        assert_eq!(peer.persistent_keepalive, 25);
        assert_eq!(peer.allowed_ips, vec![net("10.9.0.2/32")]);
    }

    #[test]
    fn zero_keys_clear() {
        let config = DeviceConfig {
            private_key: Some(key(1)),
            peers: vec![PeerConfig {
                preshared_key: Some(key(9)),
                ..PeerConfig::new(key(2))
            }],
            ..DeviceConfig::default()
        };
        let req = SetRequest {
            private_key: Some(Key::default()),
            peers: vec![PeerChange {
                preshared_key: Some(Key::default()),
                ..change(2)
            }],
            ..SetRequest::default()
        };
        let next = config.applied(&req);
        assert_eq!(next.private_key, None);
        assert_eq!(next.peer(&key(2)).unwrap().preshared_key, None);
    }

    #[test]
    fn allowed_ips_move_between_peers_and_can_be_replaced() {
        let mut config = DeviceConfig::default().applied(&SetRequest {
            peers: vec![
                PeerChange {
                    allowed_ips: vec![net("10.0.0.0/24"), net("10.0.1.0/24")],
                    ..change(2)
                },
                change(3),
            ],
            ..SetRequest::default()
        });
        config = config.applied(&SetRequest {
            peers: vec![PeerChange {
                allowed_ips: vec![net("10.0.1.0/24")],
                ..change(3)
            }],
            ..SetRequest::default()
        });
        assert_eq!(
            config.peer(&key(2)).unwrap().allowed_ips,
            vec![net("10.0.0.0/24")]
        );
        assert_eq!(
            config.peer(&key(3)).unwrap().allowed_ips,
            vec![net("10.0.1.0/24")]
        );
        config = config.applied(&SetRequest {
            peers: vec![PeerChange {
                replace_allowed_ips: true,
                allowed_ips: vec![net("10.0.2.0/24")],
                ..change(2)
            }],
            ..SetRequest::default()
        });
        assert_eq!(
            config.peer(&key(2)).unwrap().allowed_ips,
            vec![net("10.0.2.0/24")]
        );
    }

    #[test]
    fn remove_update_only_and_replace_peers() {
        let config = DeviceConfig::default().applied(&SetRequest {
            peers: vec![change(2), change(3)],
            ..SetRequest::default()
        });
        let removed = config.applied(&SetRequest {
            peers: vec![PeerChange {
                remove: true,
                ..change(2)
            }],
            ..SetRequest::default()
        });
        assert!(removed.peer(&key(2)).is_none());
        let untouched = removed.applied(&SetRequest {
            peers: vec![PeerChange {
                update_only: true,
                ..change(4)
            }],
            ..SetRequest::default()
        });
        assert_eq!(untouched, removed);
        let replaced = config.applied(&SetRequest {
            replace_peers: true,
            peers: vec![change(5)],
            ..SetRequest::default()
        });
        let keys: Vec<Key> = replaced.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, vec![key(5)]);
    }

    #[test]
    fn own_public_key_is_not_a_peer() {
        let private = key(1);
        let config = DeviceConfig::default().applied(&SetRequest {
            private_key: Some(private),
            peers: vec![PeerChange {
                public_key: private.public_key(),
                ..change(0)
            }],
            ..SetRequest::default()
        });
        assert!(config.peers.is_empty());
    }
}
