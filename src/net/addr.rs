//! Addresses on a link.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use super::{netlink_error, NetError, Netlink};

impl Netlink {
    /// Addresses on the link with index `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, NetError> {
        Ok(self
            .all_addresses()
            .await?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, ip)| ip)
            .collect())
    }

    /// Every address of the node, with the index of its link.
    pub async fn all_addresses(&self) -> Result<Vec<(u32, IpAddr)>, NetError> {
        let mut found = Vec::new();
        let mut stream = self.handle().address().get().execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(netlink_error("listing addresses", "of the node"))?
        {
            found.extend(message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                    Some((message.header.index, *ip))
                }
                _ => None,
            }));
        }
        Ok(found)
    }

    /// Puts `ip` as a host address on the link; nothing if it is there.
    pub async fn ensure_host_address(&self, index: u32, ip: IpAddr) -> Result<(), NetError> {
        self.ensure_address(index, ip, if ip.is_ipv4() { 32 } else { 128 })
            .await
    }

    /// Puts `ip/prefix` on the link; nothing if the address is there.
    pub async fn ensure_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetError> {
        if self.addresses(index).await?.contains(&ip) {
            return Ok(());
        }
        self.handle()
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink_error("adding address", ip))
    }
}
