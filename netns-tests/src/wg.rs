//! WireGuard peers driven only by wg(8): keys, `wg set`, `wg show dump`.

use std::path::Path;
use std::time::Duration;

use crate::{run_ok, Netns, Process, Scratch};

/// A key pair from `wg genkey`; the private key is written to a file for
/// `wg set ... private-key FILE`.
pub struct KeyPair {
    pub private_file: String,
    pub public: String,
}

pub fn key_pair(scratch: &Scratch, name: &str) -> KeyPair {
    let private = run_ok("wg", &["genkey"]);
    let path = scratch.path(&format!("{name}.key"));
    std::fs::write(&path, &private).expect("writing private key");
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting wg pubkey");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("wg pubkey");
    KeyPair {
        private_file: path.to_string_lossy().into_owned(),
        public: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

/// Which userspace implementation runs a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    Strait,
    WireguardGo,
}

/// Starts a device named `ifname` in `ns` and waits until `wg show`
/// answers for it.
pub fn start(ns: &Netns, implementation: Implementation, ifname: &str, log: &Path) -> Process {
    let bin = crate::strait_bin();
    let process = match implementation {
        Implementation::Strait => ns.spawn(
            &[
                &bin.to_string_lossy(),
                "tunnel",
                ifname,
                "--foreground",
                "--log-format",
                "json",
            ],
            &[("RUST_LOG", "info")],
            log,
        ),
        Implementation::WireguardGo => ns.spawn(
            &["wireguard-go", "-f", ifname],
            &[("LOG_LEVEL", "error")],
            log,
        ),
    };
    crate::wait_until(
        &format!("{implementation:?} device {ifname} to answer wg show"),
        Duration::from_secs(10),
        || ns.exec(&["wg", "show", ifname]).status.success(),
    );
    process
}

/// `wg show IFNAME dump`, parsed.
#[derive(Debug, Clone)]
pub struct Dump {
    pub listen_port: u16,
    pub peers: Vec<PeerDump>,
}

#[derive(Debug, Clone)]
pub struct PeerDump {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: String,
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: String,
}

pub fn dump(ns: &Netns, ifname: &str) -> Dump {
    let text = ns.ok(&["wg", "show", ifname, "dump"]);
    let mut lines = text.lines();
    let device: Vec<&str> = lines.next().expect("device line").split('\t').collect();
    let peers = lines
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            PeerDump {
                public_key: f[0].to_string(),
                endpoint: f[2].to_string(),
                allowed_ips: f[3].to_string(),
                latest_handshake: f[4].parse().unwrap(),
                rx_bytes: f[5].parse().unwrap(),
                tx_bytes: f[6].parse().unwrap(),
                persistent_keepalive: f[7].to_string(),
            }
        })
        .collect();
    Dump {
        listen_port: device[2].parse().unwrap(),
        peers,
    }
}

/// Configures one side of a point-to-point tunnel with `wg set` and `ip`.
pub struct TunnelEnd<'a> {
    pub ns: &'a Netns,
    pub ifname: &'a str,
    pub keys: &'a KeyPair,
    pub listen_port: u16,
    /// Inner addresses with prefix, e.g. "10.9.0.1/24".
    pub addresses: &'a [&'a str],
}

/// `wg set` this end with `peer` reachable at `peer_endpoint`, allowed
/// `peer_allowed`, then address the interface and bring it up.
pub fn configure(end: &TunnelEnd, peer: &KeyPair, peer_endpoint: &str, peer_allowed: &str) {
    end.ns.ok(&[
        "wg",
        "set",
        end.ifname,
        "private-key",
        &end.keys.private_file,
        "listen-port",
        &end.listen_port.to_string(),
        "peer",
        &peer.public,
        "endpoint",
        peer_endpoint,
        "allowed-ips",
        peer_allowed,
    ]);
    for addr in end.addresses {
        end.ns.ok(&["ip", "addr", "add", addr, "dev", end.ifname]);
    }
    end.ns.ok(&["ip", "link", "set", end.ifname, "up"]);
}

/// The device's public key as `wg show IFNAME public-key` prints it.
pub fn dump_public_key(ns: &Netns, ifname: &str) -> String {
    ns.ok(&["wg", "show", ifname, "public-key"])
        .trim()
        .to_string()
}
