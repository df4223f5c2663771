//! Routes in Strait's table ([`super::ROUTE_TABLE`]), tagged with its
//! protocol number so that they are told apart from anyone else's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

use super::{is_not_found, netlink_error, NetError, Netlink, ROUTE_PROTOCOL, ROUTE_TABLE};
use crate::plan::routes::{Route, RouteChanges};

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub(crate) fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(message.header.table.into())
}

/// The message for `route`, addressed by destination and table.
pub fn route_message(route: &Route, device_index: u32) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.destination.addr(), route.destination.prefix_len())
        .expect("an IpNet's prefix length fits its family")
        .output_interface(device_index)
        .table_id(ROUTE_TABLE)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .scope(if route.via.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        });
    if let Some(via) = route.via {
        builder = builder
            .gateway(via)
            .expect("the next hop's family was matched to the destination's")
            .onlink();
    }
    if let Some(source) = route.source {
        builder = builder
            .pref_source(source)
            .expect("the source's family was matched to the destination's");
    }
    builder.build()
}

impl Netlink {
    /// Strait's routes now in the kernel, given the names of the devices
    /// by index.
    pub async fn strait_routes(
        &self,
        devices: &BTreeMap<u32, String>,
    ) -> Result<BTreeSet<Route>, NetError> {
        let mut found = BTreeSet::new();
        let families = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for filter in families {
            let mut stream = self.handle().route().get(filter).execute();
            while let Some(message) = stream
                .try_next()
                .await
                .map_err(netlink_error("listing routes of table", ROUTE_TABLE))?
            {
                if table_of(&message) != ROUTE_TABLE
                    || message.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                {
                    continue;
                }
                let mut destination = None;
                let mut source = None;
                let mut via = None;
                let mut device = None;
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Destination(a) => destination = address(a),
                        RouteAttribute::PrefSource(a) => source = address(a),
                        RouteAttribute::Gateway(a) => via = address(a),
                        RouteAttribute::Oif(index) => device = devices.get(index).cloned(),
                        _ => {}
                    }
                }
                let (Some(destination), Some(device)) = (destination, device) else {
                    // Ours, but through a device we do not manage: stale.
                    found.insert(Route {
                        destination: IpNet::new(
                            destination.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                            message.header.destination_prefix_length,
                        )
                        .unwrap_or_default(),
                        device: String::new(),
                        via,
                        source,
                    });
                    continue;
                };
                if let Ok(destination) =
                    IpNet::new(destination, message.header.destination_prefix_length)
                {
                    found.insert(Route {
                        destination,
                        device,
                        via,
                        source,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Applies route changes: removals first, then additions.
    pub async fn apply_routes(
        &self,
        changes: &RouteChanges,
        devices: &BTreeMap<String, u32>,
    ) -> Result<(), NetError> {
        for route in &changes.remove {
            let index = devices.get(&route.device).copied().unwrap_or(0);
            let mut message = route_message(route, index);
            if index == 0 {
                message
                    .attributes
                    .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
            }
            match self.handle().route().del(message).execute().await {
                Err(e) if !is_not_found(&e) => {
                    return Err(netlink_error("removing route", route.destination)(e));
                }
                _ => {}
            }
        }
        for route in &changes.add {
            let Some(index) = devices.get(&route.device).copied() else {
                return Err(NetError::NoSuchLink(route.device.clone()));
            };
            self.handle()
                .route()
                .add(route_message(route, index))
                .replace()
                .execute()
                .await
                .map_err(netlink_error("adding route", route.destination))?;
        }
        Ok(())
    }
}
