//! Addresses on a link.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

use super::{netlink_error, NetError, Netlink};

impl Netlink {
    /// Addresses on the link with index `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, NetError> {
        let mut found = Vec::new();
        let mut stream = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(netlink_error("listing addresses of link", index))?
        {
            found.extend(message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }));
        }
        Ok(found)
    }

    /// Puts `ip` as a host address on the link; nothing if it is there.
    pub async fn ensure_host_address(&self, index: u32, ip: IpAddr) -> Result<(), NetError> {
        if self.addresses(index).await?.contains(&ip) {
            return Ok(());
        }
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        self.handle()
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await
            .map_err(netlink_error("adding address", ip))
    }
}
