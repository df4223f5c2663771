//! Kernel notifications that may concern Strait's objects: routes of its
//! table, rules, links, forwarding entries and nftables changes. They
//! wake the reconcile loop so that a hand-deleted route or a flushed table
//! is restored at once, not at the next timer tick.

use futures::StreamExt;
use rtnetlink::constants::{
    RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH,
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::watch;

use super::route::table_of;
use super::{NetError, ROUTE_TABLE};

const RTNLGRP_IPV6_RULE: u32 = 19;
/// nftables' multicast group on NETLINK_NETFILTER (NFNLGRP_NFTABLES).
const NFNLGRP_NFTABLES: u32 = 7;

/// Whether a routing notification may concern Strait's objects. ARP and
/// neighbour churn of ordinary traffic is not: only bridge-family
/// (forwarding database) entries are.
fn concerns_strait(message: &RouteNetlinkMessage) -> bool {
    match message {
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            table_of(route) == ROUTE_TABLE
        }
        RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => true,
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => true,
        RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
            n.header.family == AddressFamily::Bridge
        }
        _ => false,
    }
}

/// Starts listening; the receiver changes on every notification that may
/// concern Strait. Runs inside tokio.
pub fn watch() -> Result<watch::Receiver<u64>, NetError> {
    let (sender, receiver) = watch::channel(0u64);

    let (mut connection, _handle, mut messages) =
        rtnetlink::new_connection().map_err(NetError::Connect)?;
    let groups =
        RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE | RTMGRP_IPV4_RULE;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(NetError::Connect)?;
    // IPv6 rules have no legacy group bit.
    connection
        .socket_mut()
        .socket_mut()
        .add_membership(RTNLGRP_IPV6_RULE)
        .map_err(NetError::Connect)?;
    tokio::spawn(connection);
    let routes = sender.clone();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(inner) = &message.payload {
                if concerns_strait(inner) {
                    routes.send_modify(|n| *n += 1);
                }
            }
        }
    });

    let mut nftables = TokioSocket::new(rtnetlink::sys::protocols::NETLINK_NETFILTER)
        .map_err(NetError::Connect)?;
    nftables
        .socket_mut()
        .bind_auto()
        .map_err(NetError::Connect)?;
    nftables
        .socket_mut()
        .add_membership(NFNLGRP_NFTABLES)
        .map_err(NetError::Connect)?;
    tokio::spawn(async move {
        // Any nftables change anywhere: checking our table is one `nft`
        // listing, cheap enough not to parse which table changed.
        while nftables.recv_from_full().await.is_ok() {
            sender.send_modify(|n| *n += 1);
        }
    });
    Ok(receiver)
}
