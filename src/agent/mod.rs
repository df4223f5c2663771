//! The node agent: roles (the gateway here; the route agent and globalnet
//! to come), the reconcile loop and health checks.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, AdminState};
use crate::broker::dir::DirBroker;
use crate::broker::{Broker, BrokerError, BrokerLocation};
use crate::metrics::Metrics;
use crate::net::{NetError, Netlink};
use crate::tunnel::uapi_socket::SocketError;
use crate::tunnel::DeviceError;

pub mod config;
pub mod gateway;
pub mod health;

use config::AgentConfig;
use gateway::GatewayRole;

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

    if !config.node.gateway {
        tracing::info!(node = %config.node.name, "not a gateway candidate: nothing to do on this node yet");
        admin_state.ready.store(true, Ordering::Relaxed);
        shutdown.await;
        return Ok(());
    }

    let probe_interval = config.health_interval();
    let mut role = GatewayRole::start(config, broker.clone(), netlink, metrics).await?;
    let mut changes = broker.changes();
    let mut reconcile_timer = tokio::time::interval(RECONCILE_PERIOD);
    let mut probe_timer = tokio::time::interval(probe_interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = probe_timer.tick() => {
                role.probe();
                continue;
            }
            _ = changes.changed() => {}
            _ = reconcile_timer.tick() => {}
        }
        match role.reconcile().await {
            Ok(()) => admin_state.ready.store(true, Ordering::Relaxed),
            // A failed pass leaves what works in place; the next one retries.
            Err(e) => tracing::error!(error = %e, "reconcile failed"),
        }
    }
    tracing::info!("agent stopping");
    role.stop();
    Ok(())
}
