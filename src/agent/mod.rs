//! The node agent: roles (the gateway here; the route agent and globalnet
//! to come), the reconcile loop and health checks.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, AdminState};
use crate::broker::dir::DirBroker;
use crate::broker::{Broker, BrokerError, BrokerLocation};
use crate::metrics::Metrics;
use crate::net::vxlan::VXLAN_IF;
use crate::net::{NetError, Netlink};
use crate::plan::gateway::{plan, LocalFacts};
use crate::plan::routes::route_changes;
use crate::tunnel::uapi_socket::SocketError;
use crate::tunnel::DeviceError;

pub mod config;
pub mod gateway;
pub mod globalnet;
pub mod health;
pub mod node;

use config::AgentConfig;
use gateway::{GatewayRole, TUNNEL_IF};
use globalnet::GlobalnetRole;
use node::RouteAgent;

/// Reconcile at least this often, even when nothing announced a change.
const RECONCILE_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("kernel: {0}")]
    Net(#[from] NetError),
    #[error("tunnel: {0}")]
    Device(#[from] DeviceError),
    #[error("tunnel UAPI socket: {0}")]
    Socket(#[from] SocketError),
    #[error("private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics address {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("health checker (raw ICMP socket): {source}")]
    Health { source: std::io::Error },
    #[error("nftables: {0}")]
    Nft(#[from] crate::net::nft::NftError),
    #[error("globalnet: {0}")]
    Globalnet(#[from] crate::broker::globalnet::ClaimError),
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not supported yet")]
    Unsupported(String),
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new());
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
    });
    let listener = admin::bind(config.metrics_address)
        .await
        .map_err(|source| AgentError::Admin {
            address: config.metrics_address,
            source,
        })?;
    tokio::spawn(admin::serve(listener, admin_state.clone()));

    let BrokerLocation::Dir(path) = &config.broker;
    let broker = DirBroker::open(path, &config.cluster_id)?;
    let netlink = Netlink::connect()?;

    let probe_interval = config.health_interval();
    // Globalnet translates on the gateway; the other nodes only route.
    let mut globalnet = match config.node.gateway && config.globalnet.enabled {
        true => Some(GlobalnetRole::start(&config, path, metrics.clone())?),
        false => None,
    };
    let global = globalnet.as_ref().map(GlobalnetRole::layout);
    let local = LocalFacts {
        cluster_id: config.cluster_id.clone(),
        subnets: match global {
            Some(g) => vec![g.cidr.into()],
            None => config.subnets(),
        },
    };
    let mut gateway = match config.node.gateway {
        true => Some(
            GatewayRole::start(
                config.clone(),
                broker.clone(),
                netlink.clone(),
                metrics,
                global,
            )
            .await?,
        ),
        false => None,
    };
    let route_agent = RouteAgent::start(&config, netlink.clone()).await?;
    let mut changes = broker.changes();
    let mut kernel_changes = crate::net::events::watch()?;
    let mut reconcile_timer = tokio::time::interval(RECONCILE_PERIOD);
    let mut probe_timer = tokio::time::interval(probe_interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = probe_timer.tick() => {
                if let Some(gateway) = &gateway {
                    gateway.probe();
                }
                continue;
            }
            _ = changes.changed() => {}
            _ = kernel_changes.changed() => {}
            _ = reconcile_timer.tick() => {}
        }
        let roles = Roles {
            gateway: gateway.as_mut(),
            globalnet: globalnet.as_mut(),
            route_agent: &route_agent,
        };
        match reconcile(&*broker, &local, roles, &netlink).await {
            Ok(()) => admin_state.ready.store(true, Ordering::Relaxed),
            // A failed pass leaves what works in place; the next one retries.
            Err(e) => tracing::error!(error = %e, "reconcile failed"),
        }
    }
    tracing::info!("agent stopping");
    if let Some(gateway) = &gateway {
        gateway.stop().await;
    }
    Ok(())
}

/// The roles this node plays.
struct Roles<'a, B: Broker> {
    gateway: Option<&'a mut GatewayRole<B>>,
    globalnet: Option<&'a mut GlobalnetRole>,
    route_agent: &'a RouteAgent,
}

/// One pass: broker → plan → each role → the node's routes.
async fn reconcile<B: Broker>(
    broker: &B,
    local: &LocalFacts,
    roles: Roles<'_, B>,
    netlink: &Netlink,
) -> Result<(), AgentError> {
    let snapshot = broker.snapshot().await?;
    let plan = plan(local, &snapshot.endpoints);
    let mut desired = BTreeSet::new();
    if let Some(gateway) = roles.gateway {
        gateway.reconcile(&snapshot, &plan).await?;
        desired.extend(gateway.routes(&plan));
    }
    let translation = roles.globalnet.map(GlobalnetRole::reconcile).transpose()?;
    desired.extend(
        roles
            .route_agent
            .reconcile(&snapshot, &plan, translation)
            .await?,
    );

    let mut devices = BTreeMap::new();
    for name in [TUNNEL_IF, VXLAN_IF] {
        if let Some(link) = netlink.link(name).await? {
            devices.insert(name.to_string(), link.index);
        }
    }
    netlink.ensure_rules().await?;
    let by_index = devices
        .iter()
        .map(|(name, index)| (*index, name.clone()))
        .collect();
    let observed = netlink.strait_routes(&by_index).await?;
    let changes = route_changes(&observed, &desired);
    if !changes.is_empty() {
        tracing::info!(
            add = changes.add.len(),
            remove = changes.remove.len(),
            "updating routes"
        );
        netlink.apply_routes(&changes, &devices).await?;
    }
    Ok(())
}
