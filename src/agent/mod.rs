//! The node agent: its roles (the gateway on the configured or elected
//! gateway node, the route agent on every node), the reconcile loop and
//! health checks.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::broker::dir::DirBroker;
use crate::broker::kube::{KubeBroker, Namespace};
use crate::broker::{Broker, BrokerError, BrokerLocation};
use crate::metrics::Metrics;
use crate::net::vxlan::VXLAN_IF;
use crate::net::{NetError, Netlink};
use crate::plan::gateway::{plan, LocalFacts};
use crate::plan::routes::route_changes;
use crate::tunnel::uapi_socket::SocketError;
use crate::tunnel::DeviceError;

pub mod config;
pub mod egress_ips;
pub mod gateway;
pub mod globalnet;
pub mod health;
pub mod kubernetes;
pub mod lease;
pub mod node;
pub mod service_exports;

use crate::plan::globalnet::SliceLayout;
use config::AgentConfig;
use egress_ips::EgressIps;
use gateway::{GatewayRole, TUNNEL_IF};
use globalnet::{ExportSource, GlobalnetRole, SliceSource};
use lease::{LeaderElector, Leadership};
use node::RouteAgent;
use service_exports::ServiceExports;

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
    #[error("gateway election: {0}")]
    Lease(#[from] lease::LeaseConfigError),
    #[error("Kubernetes API: {what}: {message}")]
    Kubernetes { what: String, message: String },
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
    mut config: AgentConfig,
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

    let local = match &config.kubernetes {
        Some(kubernetes_config) => {
            let local = kubernetes::connect_local(kubernetes_config).await?;
            kubernetes::resolve_node(&local, &mut config.node).await?;
            Some(local)
        }
        None => None,
    };
    let agent = Agent {
        metrics,
        admin_state,
    };
    match config.broker.clone() {
        BrokerLocation::Dir(path) => {
            let broker = DirBroker::open(&path, &config.cluster_id)?;
            let slices = SliceSource::BrokerDir(path);
            agent.run(config, broker, local, slices, shutdown).await
        }
        BrokerLocation::Kube(kubeconfig) => {
            let Some(local) = local else {
                return Err(AgentError::Unsupported(
                    "a kube: broker without the kubernetes: section".into(),
                ));
            };
            let remote = crate::broker::kube::connect(&kubeconfig).await?;
            let broker = KubeBroker::start(remote, local.clone(), &config.cluster_id);
            let slices = SliceSource::Joined;
            agent
                .run(config, broker, Some(local), slices, shutdown)
                .await
        }
    }
}

/// How this node comes to be its cluster's gateway.
enum Candidacy {
    /// It never is.
    None,
    /// Configured as the gateway (outside Kubernetes mode).
    Configured,
    /// One of the candidates electing the active gateway by a Lease.
    Elected {
        leadership: watch::Receiver<Leadership>,
        elector: LeaderElector,
    },
}

impl Candidacy {
    fn active(&self) -> bool {
        match self {
            Candidacy::None => false,
            Candidacy::Configured => true,
            Candidacy::Elected { leadership, .. } => leadership.borrow().leading,
        }
    }
}

/// What the roles share across the run.
struct Agent {
    metrics: Arc<Metrics>,
    admin_state: Arc<AdminState>,
}

impl Agent {
    async fn run<B: Broker>(
        self,
        config: AgentConfig,
        broker: Arc<B>,
        local: Option<Namespace>,
        slices: SliceSource,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let netlink = Netlink::connect()?;
        // Globalnet translates on the active gateway; candidates hold
        // their cluster's slice so that they can take over.
        let exports_changes = watch::Sender::new(0u64);
        let mut globalnet = match config.node.gateway && config.globalnet.enabled {
            true => {
                let exports = match &local {
                    Some(local) => ExportSource::Kubernetes {
                        exports: Box::new(ServiceExports::start(
                            local.client.clone(),
                            &exports_changes,
                        )),
                        egress_ips: Box::new(EgressIps::start(
                            local.client.clone(),
                            &exports_changes,
                        )),
                    },
                    None => ExportSource::Dir(config.globalnet.exports_dir.clone()),
                };
                Some(GlobalnetRole::start(
                    &config,
                    &slices,
                    exports,
                    self.metrics.clone(),
                )?)
            }
            false => None,
        };
        let mut exports_changed = exports_changes.subscribe();
        let global = globalnet.as_ref().map(GlobalnetRole::layout);
        let local_facts = LocalFacts {
            cluster_id: config.cluster_id.clone(),
            subnets: match global {
                Some(g) => vec![g.cidr.into()],
                None => config.subnets(),
            },
        };
        let candidacy = match (&local, &config.kubernetes) {
            _ if !config.node.gateway => Candidacy::None,
            (Some(local), Some(kubernetes_config)) => {
                let (leadership, elector) = LeaderElector::spawn(
                    local.client.clone(),
                    &local.name,
                    kubernetes::GATEWAY_LEASE,
                    &config.node.name,
                    kubernetes_config.lease.config()?,
                );
                Candidacy::Elected {
                    leadership,
                    elector,
                }
            }
            _ => Candidacy::Configured,
        };
        // A configured gateway that cannot start is a configuration
        // problem: say so and stop. An elected one retries every pass.
        let mut gateway = match candidacy {
            Candidacy::Configured => Some(
                self.start_gateway(&config, &broker, &netlink, false, global)
                    .await?,
            ),
            _ => None,
        };
        let mut passive_published = false;
        let route_agent = RouteAgent::start(&config, netlink.clone()).await?;
        let mut changes = broker.changes();
        let mut kernel_changes = crate::net::events::watch()?;
        let mut leadership_changes = match &candidacy {
            Candidacy::Elected { leadership, .. } => leadership.clone(),
            _ => watch::channel(Leadership::default()).1,
        };
        let mut reconcile_timer = tokio::time::interval(RECONCILE_PERIOD);
        let mut probe_timer = tokio::time::interval(config.health_interval());
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
                _ = exports_changed.changed() => {}
                _ = kernel_changes.changed() => {}
                Ok(()) = leadership_changes.changed() => {}
                _ = reconcile_timer.tick() => {}
            }
            if let Candidacy::Elected { .. } = candidacy {
                let active = candidacy.active();
                if active && gateway.is_none() {
                    tracing::info!("elected the active gateway");
                    match self
                        .start_gateway(&config, &broker, &netlink, true, global)
                        .await
                    {
                        Ok(role) => gateway = Some(role),
                        Err(e) => tracing::error!(error = %e, "could not start the gateway role"),
                    }
                    passive_published = false;
                } else if !active {
                    if let Some(role) = gateway.take() {
                        tracing::info!("no longer the active gateway: standing by");
                        role.stop().await;
                    }
                    if !passive_published {
                        match gateway::publish_passive(&config, &*broker, global).await {
                            Ok(()) => passive_published = true,
                            Err(e) => {
                                tracing::warn!(error = %e, "publishing the passive gateway status failed")
                            }
                        }
                    }
                }
            }
            let active = gateway.is_some();
            let roles = Roles {
                gateway: gateway.as_mut(),
                globalnet: globalnet.as_mut().filter(|_| active),
                route_agent: &route_agent,
            };
            match reconcile(&*broker, &local_facts, roles, &netlink).await {
                Ok(()) => self.admin_state.ready.store(true, Ordering::Relaxed),
                // A failed pass leaves what works in place; the next one retries.
                Err(e) => tracing::error!(error = %e, "reconcile failed"),
            }
        }
        tracing::info!("agent stopping");
        if let Some(gateway) = &gateway {
            gateway.stop().await;
        }
        if let Candidacy::Elected { elector, .. } = candidacy {
            elector.release().await;
        }
        Ok(())
    }

    async fn start_gateway<B: Broker>(
        &self,
        config: &AgentConfig,
        broker: &Arc<B>,
        netlink: &Netlink,
        elected: bool,
        global: Option<SliceLayout>,
    ) -> Result<GatewayRole<B>, AgentError> {
        GatewayRole::start(
            config.clone(),
            broker.clone(),
            netlink.clone(),
            self.metrics.clone(),
            elected,
            global,
        )
        .await
    }
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
    let mut tunnel_routes = BTreeSet::new();
    if let Some(gateway) = roles.gateway {
        gateway.reconcile(&snapshot, &plan).await?;
        tunnel_routes = gateway.routes(&plan);
    }
    let mut globalnet = roles.globalnet;
    let translation = match globalnet.as_deref_mut() {
        Some(globalnet) => Some(globalnet.reconcile().await?),
        None => None,
    };
    let node_routes = roles
        .route_agent
        .reconcile(&snapshot, &plan, translation)
        .await?;
    // What globalnet allocated is written to the API once its rules are
    // in place, not before: a client that sees its pool translates.
    if let Some(globalnet) = globalnet {
        globalnet.write_back().await;
    }
    // A gateway that is not the cluster's active one routes like any
    // node, over VXLAN to the active one: wanting its tunnel routes to the
    // same destinations too would replace one with the other every pass.
    let desired = match node_routes.is_empty() {
        true => tunnel_routes,
        false => node_routes,
    };

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
