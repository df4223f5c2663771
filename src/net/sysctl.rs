//! The sysctls a gateway needs: forwarding between the tunnel and pods.

use super::NetError;

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns IPv4 forwarding on unless it is on.
pub fn ensure_ipv4_forwarding() -> Result<(), NetError> {
    let current = std::fs::read_to_string(IPV4_FORWARD).map_err(|source| NetError::Sysctl {
        op: "reading",
        path: IPV4_FORWARD.into(),
        source,
    })?;
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(IPV4_FORWARD, "1").map_err(|source| NetError::Sysctl {
        op: "writing",
        path: IPV4_FORWARD.into(),
        source,
    })
}
