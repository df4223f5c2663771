//! `strait uninstall`: removes every kernel object Strait owns on this
//! node. Stop the agent first, or it puts them back.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;

use crate::agent::gateway::TUNNEL_IF;
use crate::net::nft::NftTable;
use crate::net::vxlan::VXLAN_IF;
use crate::net::Netlink;
use crate::plan::routes::RouteChanges;

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {}

pub fn run(_args: UninstallArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let netlink = Netlink::connect()?;
        for name in [TUNNEL_IF, VXLAN_IF] {
            if let Some(link) = netlink.link(name).await? {
                netlink.delete_link(link.index, name).await?;
                println!("removed link {name}");
            }
        }
        // Routes through the links went with them; any left are stale.
        let routes = netlink.strait_routes(&BTreeMap::new()).await?;
        if !routes.is_empty() {
            let changes = RouteChanges {
                add: Vec::new(),
                remove: routes.into_iter().collect(),
            };
            netlink.apply_routes(&changes, &BTreeMap::new()).await?;
            println!(
                "removed {} routes of table {}",
                changes.remove.len(),
                crate::net::ROUTE_TABLE
            );
        }
        let rules = netlink.remove_rules().await?;
        if rules > 0 {
            println!(
                "removed {rules} rules at priority {}",
                crate::net::RULE_PRIORITY
            );
        }
        if NftTable::remove()? {
            println!("removed nftables table inet {}", crate::net::nft::TABLE);
        }
        println!("nothing of Strait is left on this node");
        anyhow::Ok(())
    })
}
