//! Globalnet on simulated clusters: a node's exported services (`dir`
//! mode: one YAML file each in `<node dir>/exports`, the agent's
//! `globalnet.exports_dir`) and what its agent decided (its state file,
//! `<state dir>/globalnet.yaml`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

use crate::cluster::{str_at, Node};
use crate::wait_until;

/// The agent's state file in its state directory.
const STATE_FILE: &str = "globalnet.yaml";

/// Where the node's agent reads exports from.
pub fn exports_dir(node: &Node) -> PathBuf {
    node.dir.join("exports")
}

/// Exports `address:port` (TCP) as `name`, written atomically.
pub fn export(node: &Node, name: &str, address: Ipv4Addr, port: u16) {
    write_export(
        node,
        name,
        &format!("name: {name}\naddress: {address}\nport: {port}\nprotocol: tcp\n"),
    );
}

/// Writes an export file as given (malformed ones too).
pub fn write_export(node: &Node, name: &str, text: &str) {
    let dir = exports_dir(node);
    std::fs::create_dir_all(&dir).expect("creating the exports directory");
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).expect("writing an export");
    std::fs::rename(&temp, dir.join(format!("{name}.yaml"))).expect("renaming an export");
}

pub fn unexport(node: &Node, name: &str) {
    std::fs::remove_file(exports_dir(node).join(format!("{name}.yaml")))
        .expect("removing an export");
}

/// The agent's globalnet state, once it wrote one.
pub fn state(node: &Node) -> Option<Value> {
    let text = std::fs::read_to_string(node.state_dir.join(STATE_FILE)).ok()?;
    serde_yaml::from_str(&text).ok()
}

/// The ingress IP the agent gave export `name`.
pub fn ingress_ip(node: &Node, name: &str) -> Option<Ipv4Addr> {
    str_at(&state(node)?, &["ingress", name, "ip"])?
        .parse()
        .ok()
}

/// Why the agent refused export `name`.
pub fn refusal(node: &Node, name: &str) -> Option<String> {
    str_at(&state(node)?, &["refused", name]).map(str::to_string)
}

/// Waits until export `name` has an ingress IP; returns it.
pub fn wait_ingress_ip(node: &Node, name: &str, limit: Duration) -> Ipv4Addr {
    wait_until(
        &format!("an ingress IP for export {name} of {}", node.name),
        limit,
        || ingress_ip(node, name).is_some(),
    );
    ingress_ip(node, name).expect("just seen")
}

/// The cluster's global CIDR, from its agent's state.
pub fn global_cidr(node: &Node) -> Option<String> {
    str_at(&state(node)?, &["global_cidr"]).map(str::to_string)
}

/// The egress pool, `FIRST-LAST`, from its agent's state.
pub fn egress_ips(node: &Node) -> Option<String> {
    str_at(&state(node)?, &["egress_ips"]).map(str::to_string)
}

/// Packet counts of a test-made nft table's rules, by comment.
pub fn probe_counts(node_ns: &crate::Netns, table: &str) -> BTreeMap<String, u64> {
    rule_counts(node_ns, "ip", table)
}

/// Packets counted by each commented rule of nft table `family table`.
pub fn rule_counts(node_ns: &crate::Netns, family: &str, table: &str) -> BTreeMap<String, u64> {
    let listing = node_ns.ok(&["nft", "list", "table", family, table]);
    listing
        .lines()
        .filter_map(|line| {
            let comment = line.split("comment \"").nth(1)?.trim_end_matches('"');
            let packets = line
                .split("packets ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((comment.to_string(), packets))
        })
        .collect()
}
