//! Kernel objects, one file each: message builders and the calls that
//! apply or observe them over rtnetlink. Knows nothing of brokers.

pub mod addr;
pub mod events;
pub mod link;
pub mod nft;
pub mod route;
pub mod rule;
pub mod sysctl;
pub mod vxlan;

/// Strait's routing table, rule priority and route protocol: fixed so
/// that a restart adopts them and `strait uninstall` finds them.
pub const ROUTE_TABLE: u32 = 160;
pub const RULE_PRIORITY: u32 = 160;
pub const ROUTE_PROTOCOL: u8 = 160;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("opening a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("{op} {object}: {source}")]
    Netlink {
        op: &'static str,
        object: String,
        source: rtnetlink::Error,
    },
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    #[error("{op} {path}: {source}")]
    Sysctl {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// An rtnetlink connection; its I/O runs as a tokio task.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}

pub(crate) fn netlink_error(
    op: &'static str,
    object: impl ToString,
) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        op,
        object: object.to_string(),
        source,
    }
}

/// Whether an rtnetlink error is the kernel saying "no such object".
pub(crate) fn is_not_found(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(e) if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ESRCH || e.raw_code() == -libc::ENODEV)
}
