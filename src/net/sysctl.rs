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

/// Loose reverse-path filtering on `ifname`: replies from pods on other
/// nodes arrive over VXLAN while the route back to those pods goes through
/// the CNI, which strict filtering would drop.
pub fn ensure_loose_rp_filter(ifname: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter");
    let current = std::fs::read_to_string(&path).map_err(|source| NetError::Sysctl {
        op: "reading",
        path: path.clone(),
        source,
    })?;
    if current.trim() == "2" {
        return Ok(());
    }
    std::fs::write(&path, "2").map_err(|source| NetError::Sysctl {
        op: "writing",
        path,
        source,
    })
}
