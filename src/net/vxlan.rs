//! The intra-cluster VXLAN device that carries traffic between the nodes
//! and the active gateway, and its forwarding database.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::LinkVxlan;

use super::link::LinkRef;
use super::{is_not_found, netlink_error, NetError, Netlink};

/// Fixed name, VNI and port: a restart adopts the device, uninstall finds it.
pub const VXLAN_IF: &str = "strait-vx";
pub const VXLAN_VNI: u32 = 160;
pub const VXLAN_PORT: u16 = 4803;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The all-zeros MAC: the VXLAN default destination for unknown and
/// broadcast frames.
const DEFAULT_MAC: [u8; 6] = [0; 6];

/// The VXLAN address of a node: 240.b.c.d for node address a.b.c.d, as
/// Submariner derives it, so every node can compute every other's.
pub fn overlay_address(node: Ipv4Addr) -> Ipv4Addr {
    let [_, b, c, d] = node.octets();
    Ipv4Addr::new(240, b, c, d)
}

/// The VXLAN parameters Strait sets, read back from a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub underlay: u32,
}

fn params_of(attributes: &[LinkAttribute]) -> Option<VxlanParams> {
    let infos = attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    if !infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)))
    {
        return None;
    }
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    })?;
    let mut params = VxlanParams {
        vni: 0,
        local: Ipv4Addr::UNSPECIFIED,
        port: 0,
        underlay: 0,
    };
    for item in data {
        match item {
            InfoVxlan::Id(vni) => params.vni = *vni,
            InfoVxlan::Local(local) => params.local = *local,
            InfoVxlan::Port(port) => params.port = *port,
            InfoVxlan::Link(link) => params.underlay = *link,
            _ => {}
        }
    }
    Some(params)
}

impl Netlink {
    /// The VXLAN parameters of `name`, if it is a VXLAN link.
    pub async fn vxlan(&self, name: &str) -> Result<Option<(u32, VxlanParams)>, NetError> {
        Ok(self
            .link_message(LinkRef::Name(name))
            .await?
            .and_then(|link| params_of(&link.attributes).map(|p| (link.header.index, p))))
    }

    /// Creates `strait-vx` with `wanted`, replacing a link of that name
    /// with other parameters; nothing when it is right already.
    pub async fn ensure_vxlan(&self, wanted: &VxlanParams) -> Result<u32, NetError> {
        match self.vxlan(VXLAN_IF).await? {
            Some((index, params)) if params == *wanted => return Ok(index),
            Some((index, _)) => self.delete_link(index, VXLAN_IF).await?,
            None => {
                // A link of that name that is no VXLAN is in the way too.
                if let Some(other) = self.link(VXLAN_IF).await? {
                    self.delete_link(other.index, VXLAN_IF).await?;
                }
            }
        }
        let message = LinkVxlan::new(VXLAN_IF, wanted.vni)
            .local(wanted.local)
            .port(wanted.port)
            .dev(wanted.underlay)
            .learning(true)
            .build();
        self.handle()
            .link()
            .add(message)
            .execute()
            .await
            .map_err(netlink_error("creating VXLAN link", VXLAN_IF))?;
        Ok(self
            .link(VXLAN_IF)
            .await?
            .ok_or_else(|| NetError::NoSuchLink(VXLAN_IF.into()))?
            .index)
    }

    pub async fn delete_link(&self, index: u32, name: &str) -> Result<(), NetError> {
        match self.handle().link().del(index).execute().await {
            Err(e) if !is_not_found(&e) => Err(netlink_error("deleting link", name)(e)),
            _ => Ok(()),
        }
    }

    /// Where unknown frames of the VXLAN link go: the all-zeros FDB entry.
    pub async fn vxlan_default_destination(&self, index: u32) -> Result<Vec<IpAddr>, NetError> {
        let mut request = self.handle().neighbours().get();
        request.message_mut().header.family = AddressFamily::Bridge;
        let mut entries = request.execute();
        let mut found = Vec::new();
        while let Some(entry) = entries.try_next().await.map_err(netlink_error(
            "listing the forwarding database of",
            VXLAN_IF,
        ))? {
            if entry.header.ifindex != index || mac_of(&entry) != Some(DEFAULT_MAC.to_vec()) {
                continue;
            }
            found.extend(entry.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(address) => ip_of(address),
                _ => None,
            }));
        }
        Ok(found)
    }

    /// Points the VXLAN default destination at exactly `destination` (the
    /// active gateway), or removes it when `None`.
    pub async fn set_vxlan_default_destination(
        &self,
        index: u32,
        destination: Option<IpAddr>,
    ) -> Result<(), NetError> {
        let current = self.vxlan_default_destination(index).await?;
        if current.len() == destination.iter().count()
            && current.iter().all(|c| Some(*c) == destination)
        {
            return Ok(());
        }
        for stale in current.iter().filter(|c| Some(**c) != destination) {
            let mut message = NeighbourMessage::default();
            message.header.family = AddressFamily::Bridge;
            message.header.ifindex = index;
            message.header.flags = NeighbourFlags::Own;
            message
                .attributes
                .push(NeighbourAttribute::LinkLayerAddress(DEFAULT_MAC.to_vec()));
            message
                .attributes
                .push(NeighbourAttribute::Destination(match stale {
                    IpAddr::V4(v4) => NeighbourAddress::Inet(*v4),
                    IpAddr::V6(v6) => NeighbourAddress::Inet6(*v6),
                }));
            match self.handle().neighbours().del(message).execute().await {
                Err(e) if !is_not_found(&e) => {
                    return Err(netlink_error("removing forwarding entry to", stale)(e));
                }
                _ => {}
            }
        }
        if let Some(destination) = destination.filter(|d| !current.contains(d)) {
            self.handle()
                .neighbours()
                .add_bridge(index, &DEFAULT_MAC)
                .flags(NeighbourFlags::Own)
                .destination(destination)
                // Not `replace`: VXLAN refuses it for the all-zeros entry,
                // and the stale destinations are gone by now.
                .execute()
                .await
                .map_err(netlink_error("adding forwarding entry to", destination))?;
        }
        Ok(())
    }
}

/// Bridge-family entries carry their destination as raw bytes.
fn ip_of(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?)),
            _ => None,
        },
        _ => None,
    }
}

fn mac_of(entry: &NeighbourMessage) -> Option<Vec<u8>> {
    entry.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(mac) => Some(mac.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_addresses_follow_node_addresses() {
        assert_eq!(
            overlay_address(Ipv4Addr::new(192, 0, 2, 17)),
            Ipv4Addr::new(240, 0, 2, 17)
        );
        assert_eq!(
            overlay_address(Ipv4Addr::new(172, 16, 1, 10)),
            Ipv4Addr::new(240, 16, 1, 10)
        );
    }
}
