//! The policy rule that sends lookups through Strait's table first.

use futures::TryStreamExt;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::IpVersion;

use super::{netlink_error, NetError, Netlink, ROUTE_TABLE, RULE_PRIORITY};

fn is_ours(rule: &RuleMessage) -> bool {
    let priority = rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    let table = rule
        .attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(rule.header.table.into());
    priority == Some(RULE_PRIORITY) && table == ROUTE_TABLE
}

impl Netlink {
    /// Deletes Strait's rules (IPv4 and IPv6); returns how many went.
    pub async fn remove_rules(&self) -> Result<usize, NetError> {
        let mut removed = 0;
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut ours = Vec::new();
            let mut rules = self.handle().rule().get(version).execute();
            while let Some(rule) = rules
                .try_next()
                .await
                .map_err(netlink_error("listing rules", "ip rule"))?
            {
                if is_ours(&rule) {
                    ours.push(rule);
                }
            }
            for rule in ours {
                self.handle()
                    .rule()
                    .del(rule)
                    .execute()
                    .await
                    .map_err(netlink_error(
                        "deleting rule",
                        format!("pref {RULE_PRIORITY}"),
                    ))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// `ip rule add pref RULE_PRIORITY lookup ROUTE_TABLE`, for IPv4 and
    /// IPv6, unless present. Lookups that find nothing there fall through
    /// to the main table.
    pub async fn ensure_rules(&self) -> Result<(), NetError> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut present = false;
            let mut rules = self.handle().rule().get(version.clone()).execute();
            while let Some(rule) = rules
                .try_next()
                .await
                .map_err(netlink_error("listing rules", "ip rule"))?
            {
                present |= is_ours(&rule);
            }
            if present {
                continue;
            }
            let add = self
                .handle()
                .rule()
                .add()
                .priority(RULE_PRIORITY)
                .table_id(ROUTE_TABLE)
                .action(RuleAction::ToTable);
            let result = match version {
                IpVersion::V4 => add.v4().execute().await,
                IpVersion::V6 => add.v6().execute().await,
            };
            result.map_err(netlink_error(
                "adding rule",
                format!("pref {RULE_PRIORITY}"),
            ))?;
        }
        Ok(())
    }
}
