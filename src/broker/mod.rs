//! Where clusters meet: the `Broker` trait and its backends. Objects use
//! Submariner's `submariner.io/v1` schema (see [`types`]). Knows nothing of
//! netlink.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::watch;

pub mod crd;
pub mod dir;
pub mod globalnet;
pub mod globalnet_types;
pub mod kube;
pub mod mcs;
pub mod types;

use types::{Cluster, Endpoint, Gateway, Kind, Object};

/// Where the broker is, as written in configurations: `dir:PATH`, or
/// `kube:KUBECONFIG` (the broker namespace is the kubeconfig context's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerLocation {
    Dir(PathBuf),
    Kube(PathBuf),
}

impl FromStr for BrokerLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => Ok(BrokerLocation::Dir(path.into())),
            Some(("kube", path)) if !path.is_empty() => Ok(BrokerLocation::Kube(path.into())),
            _ => Err(format!(
                "{s:?} is not a broker location: expected dir:PATH or kube:KUBECONFIG"
            )),
        }
    }
}

impl fmt::Display for BrokerLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerLocation::Dir(path) => write!(f, "dir:{}", path.display()),
            BrokerLocation::Kube(path) => write!(f, "kube:{}", path.display()),
        }
    }
}

impl Serialize for BrokerLocation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BrokerLocation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything the broker holds at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<Endpoint>,
    pub gateways: Vec<Gateway>,
    /// Objects that could not be taken, and why; never deleted.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Skipped {
    /// The file or object the problem is in.
    pub source: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster {local} may not write {kind} {name}: it belongs to cluster {owner:?}")]
    NotOwner {
        local: String,
        kind: &'static str,
        name: String,
        owner: String,
    },
    #[error("{op} {target}: {message}")]
    Kube {
        op: &'static str,
        target: String,
        message: String,
    },
    #[error("encoding {kind} {name}: {message}")]
    Encode {
        kind: &'static str,
        name: String,
        message: String,
    },
}

/// A broker backend, seen from one cluster: it reads everything and
/// writes only that cluster's own objects.
pub trait Broker: Send + Sync + 'static {
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, BrokerError>> + Send;

    /// One object by kind and name, if present and well-formed.
    fn get<S: Kind + Send>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Object<S>>, BrokerError>> + Send;

    /// Creates or replaces an object of the local cluster.
    fn publish<S: Kind + Send + Sync>(
        &self,
        object: &Object<S>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Removes an object of the local cluster; absent is fine.
    fn withdraw<S: Kind>(&self, name: &str)
        -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Changes whenever the broker may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}
