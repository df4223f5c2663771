//! Links: find by name, bring up, set the MTU.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::LinkUnspec;

use super::{is_not_found, netlink_error, NetError, Netlink};

/// A link by name or by index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LinkRef<'a> {
    Name(&'a str),
    Index(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mtu: Option<u32>,
}

fn state_of(message: &LinkMessage) -> LinkState {
    LinkState {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        mtu: message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        }),
    }
}

impl Netlink {
    /// The link message of `name` or of `index`, or `None` if there is none.
    pub(crate) async fn link_message(
        &self,
        link: LinkRef<'_>,
    ) -> Result<Option<LinkMessage>, NetError> {
        let request = self.handle().link().get();
        let (mut links, what) = match link {
            LinkRef::Name(name) => (
                request.match_name(name.to_string()).execute(),
                name.to_string(),
            ),
            LinkRef::Index(index) => (request.match_index(index).execute(), index.to_string()),
        };
        match links.try_next().await {
            Ok(found) => Ok(found),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(netlink_error("looking up link", what)(e)),
        }
    }

    /// The link named `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, NetError> {
        Ok(self
            .link_message(LinkRef::Name(name))
            .await?
            .as_ref()
            .map(state_of))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>, NetError> {
        Ok(self
            .link_message(LinkRef::Index(index))
            .await?
            .as_ref()
            .map(state_of))
    }

    /// Brings `name` up with `mtu`; writes nothing when it already is.
    pub async fn ensure_link_up(&self, name: &str, mtu: u32) -> Result<u32, NetError> {
        let state = self
            .link(name)
            .await?
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))?;
        if !state.up || state.mtu != Some(mtu) {
            let message = LinkUnspec::new_with_index(state.index)
                .mtu(mtu)
                .up()
                .build();
            self.handle()
                .link()
                .set(message)
                .execute()
                .await
                .map_err(netlink_error("bringing up link", name))?;
        }
        Ok(state.index)
    }
}
