//! The route agent role, on every node: the VXLAN device to the active
//! gateway and the routes that send remote-bound traffic to it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::config::AgentConfig;
use super::AgentError;
use crate::broker::Snapshot;
use crate::net::nft::{GlobalnetNft, NftPlan, NftTable};
use crate::net::vxlan::{
    overlay_address, VxlanParams, VXLAN_IF, VXLAN_OVERHEAD, VXLAN_PORT, VXLAN_VNI,
};
use crate::net::Netlink;
use crate::plan::gateway::GatewayPlan;
use crate::plan::node::{active_gateway, is_this_node, node_plan, NodeFacts};
use crate::plan::routes::Route;

pub struct RouteAgent {
    netlink: Netlink,
    local_subnets: Vec<ipnet::IpNet>,
    mss: Option<u16>,
    /// Blocking (it runs nft); behind a lock for spawn_blocking.
    nft: Arc<Mutex<NftTable>>,
    facts: NodeFacts,
    vxlan: VxlanParams,
    mtu: u32,
}

impl RouteAgent {
    /// Finds the node's underlay link and CNI address; the VXLAN device
    /// itself is (re)made on every reconcile if missing.
    pub async fn start(config: &AgentConfig, netlink: Netlink) -> Result<RouteAgent, AgentError> {
        let IpAddr::V4(node_ip) = config.node_ip() else {
            return Err(AgentError::Unsupported(
                "an IPv6 node address for the VXLAN overlay".into(),
            ));
        };
        let addresses = netlink.all_addresses().await?;
        let underlay = addresses
            .iter()
            .find(|(_, ip)| *ip == config.node_ip())
            .map(|(index, _)| *index)
            .ok_or_else(|| {
                AgentError::Unsupported(format!("node.ip {node_ip}: no link of this node has it"))
            })?;
        let underlay_mtu = netlink
            .link_by_index(underlay)
            .await?
            .and_then(|l| l.mtu)
            .unwrap_or(1500);
        // Strait's own devices hold pod-CIDR addresses too (the gateway's
        // health-check address): the CNI's address is elsewhere.
        let mut own_links = Vec::new();
        for name in [super::gateway::TUNNEL_IF, VXLAN_IF] {
            own_links.extend(netlink.link(name).await?.map(|l| l.index));
        }
        let cni_ip = addresses
            .iter()
            .filter(|(index, _)| !own_links.contains(index))
            .map(|(_, ip)| *ip)
            .find(|ip| config.cluster.pod_cidrs.iter().any(|n| n.contains(ip)));
        if cni_ip.is_none() {
            tracing::warn!("no address of this node is in the pod CIDRs: host-network traffic to remote clusters will be refused by their gateways");
        }
        Ok(RouteAgent {
            netlink,
            local_subnets: config.subnets(),
            mss: config.cable.mss,
            nft: Arc::new(Mutex::new(NftTable::new())),
            facts: NodeFacts {
                cluster_id: config.cluster_id.clone(),
                name: config.node.name.clone(),
                ip: node_ip,
                cni_ip,
            },
            vxlan: VxlanParams {
                vni: VXLAN_VNI,
                local: node_ip,
                port: VXLAN_PORT,
                underlay,
            },
            mtu: underlay_mtu - VXLAN_OVERHEAD,
        })
    }

    /// Makes the VXLAN device and its default destination right, and the
    /// nft table (with globalnet's translation on a globalnet gateway);
    /// returns the routes this node wants in Strait's table.
    pub async fn reconcile(
        &self,
        snapshot: &Snapshot,
        connections: &GatewayPlan,
        globalnet: Option<GlobalnetNft>,
    ) -> Result<BTreeSet<Route>, AgentError> {
        let active = active_gateway(&self.facts.cluster_id, &snapshot.endpoints);
        let plan = node_plan(&self.facts, active, connections);
        // Only the active gateway translates: replies come back to it.
        let globalnet = globalnet.filter(|_| active.is_some_and(|g| is_this_node(&self.facts, g)));
        let index = self.netlink.ensure_vxlan(&self.vxlan).await?;
        self.netlink.ensure_link_up(VXLAN_IF, self.mtu).await?;
        self.netlink
            .ensure_address(index, IpAddr::V4(overlay_address(self.facts.ip)), 8)
            .await?;
        crate::net::sysctl::ensure_loose_rp_filter(VXLAN_IF)?;
        self.netlink
            .set_vxlan_default_destination(index, plan.vxlan_destination)
            .await?;
        let nft_plan = NftPlan {
            local_subnets: self.local_subnets.clone(),
            remote_subnets: connections
                .peers
                .values()
                .flat_map(|p| p.subnets.clone())
                .collect(),
            mss: self.mss,
            globalnet,
        };
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || nft.lock().ensure(&nft_plan))
            .await
            .expect("the nft task does not panic")?;
        Ok(plan.routes)
    }
}
