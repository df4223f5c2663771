//! Strait's one nftables table, `inet strait`: rendered whole from an
//! [`NftPlan`] by a pure function and applied in one transaction through
//! the `nft` command line (Debian's nftables package).
//!
//! What the table does, for this cluster's subnets (`local4`/`local6`) and
//! the connected remote clusters' subnets (`remote4`/`remote6`):
//!
//! - chain `postrouting` (nat, `srcnat - 10`): cross-cluster packets (local
//!   to remote and remote to local) get an *identity* SNAT, `snat ip to ip
//!   saddr`. Netfilter runs NAT rules only until a chain sets up the NAT
//!   binding of a connection; later srcnat chains (the CNI's `masquerade`)
//!   are skipped for it. A plain `accept` would not do that: every base
//!   chain of the hook still runs.
//! - chain `forward` (filter, `filter - 10`): TCP MSS clamped on SYN and
//!   SYN-ACK packets to and from remote clusters (to the route's MTU, or to
//!   a fixed MSS; the kernel only ever lowers an MSS), then cross-cluster
//!   packets are accepted.
//! - chain `output` (filter, `filter - 10`): the same MSS clamp for
//!   host-network connections to remote clusters.
//!
//! With globalnet (on the gateway only, [`GlobalnetNft`]) the remote sets
//! hold the remote clusters' global CIDRs, and:
//!
//! - chain `postrouting` first SNATs local sources going to remote clusters
//!   to the cluster's egress pool (ahead of the identity SNAT, which would
//!   otherwise bind the connection untranslated);
//! - chain `prerouting` (nat, `dstnat - 10`) DNATs each exported service's
//!   ingress IP and port to the service's address, for traffic out of the
//!   tunnel only (what a remote cluster's gateway sent).
//!
//! Every rule has a counter and a unique comment ([`counters`] reads them
//! back by comment). The table carries a comment holding a hash of its
//! rendering, so `nft list ruleset` shows which plan is in force.
//!
//! The calls here block (they run `nft`): call them from a blocking thread.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The table's name; its family is `inet`.
pub const TABLE: &str = "strait";
/// The program run for every transaction and listing.
const NFT: &str = "nft";
/// How the table's comment starts; the rest is the hash of the rendering.
const COMMENT_PREFIX: &str = "strait plan sha256:";

/// Comments of the rules, which [`counters`] returns counts by.
pub mod rule {
    pub const NO_MASQUERADE_LOCAL_TO_REMOTE_4: &str = "no-masquerade local-to-remote ipv4";
    pub const NO_MASQUERADE_REMOTE_TO_LOCAL_4: &str = "no-masquerade remote-to-local ipv4";
    pub const NO_MASQUERADE_LOCAL_TO_REMOTE_6: &str = "no-masquerade local-to-remote ipv6";
    pub const NO_MASQUERADE_REMOTE_TO_LOCAL_6: &str = "no-masquerade remote-to-local ipv6";
    pub const MSS_FORWARD_TO_REMOTE_4: &str = "mss-clamp forward to-remote ipv4";
    pub const MSS_FORWARD_FROM_REMOTE_4: &str = "mss-clamp forward from-remote ipv4";
    pub const MSS_FORWARD_TO_REMOTE_6: &str = "mss-clamp forward to-remote ipv6";
    pub const MSS_FORWARD_FROM_REMOTE_6: &str = "mss-clamp forward from-remote ipv6";
    pub const ACCEPT_TO_REMOTE_4: &str = "accept forward to-remote ipv4";
    pub const ACCEPT_FROM_REMOTE_4: &str = "accept forward from-remote ipv4";
    pub const ACCEPT_TO_REMOTE_6: &str = "accept forward to-remote ipv6";
    pub const ACCEPT_FROM_REMOTE_6: &str = "accept forward from-remote ipv6";
    pub const MSS_OUTPUT_TO_REMOTE_4: &str = "mss-clamp output to-remote ipv4";
    pub const MSS_OUTPUT_TO_REMOTE_6: &str = "mss-clamp output to-remote ipv6";
    pub const GLOBALNET_EGRESS: &str = "globalnet egress";
    /// Followed by a space and the export's name.
    pub const GLOBALNET_INGRESS: &str = "globalnet ingress";
}

/// What the table must do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftPlan {
    /// This cluster's pod and service CIDRs.
    pub local_subnets: Vec<IpNet>,
    /// The connected remote clusters' subnets.
    pub remote_subnets: Vec<IpNet>,
    /// A fixed TCP MSS; `None` clamps to the route's MTU
    /// (`tcp option maxseg size set rt mtu`).
    pub mss: Option<u16>,
    /// Globalnet's translation, on the gateway of a globalnet cluster.
    pub globalnet: Option<GlobalnetNft>,
}

/// Globalnet's address translation on the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalnetNft {
    /// The tunnel device: ingress IPs are translated for its traffic.
    pub tunnel: String,
    /// The egress pool, first and last address.
    pub egress: (Ipv4Addr, Ipv4Addr),
    /// Pools of selected pods, ahead of the cluster's pool.
    pub egress_pools: Vec<EgressPool>,
    pub ingress: Vec<IngressRule>,
    /// Pods with a global address of their own (a headless service's),
    /// ahead of every pool.
    pub pods: Vec<PodTranslation>,
}

/// A pod and its global address, both ways: traffic to `global_ip` out
/// of the tunnel goes to `address` (every port), and the pod's traffic to
/// remote clusters leaves from `global_ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTranslation {
    /// `namespace/name` of its `GlobalIngressIP`: the rules' comment.
    pub name: String,
    pub global_ip: Ipv4Addr,
    pub address: Ipv4Addr,
}

/// Traffic from `sources` to remote clusters leaves from `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPool {
    /// The pool's name (`namespace/name`): the rule's comment.
    pub name: String,
    pub sources: Vec<Ipv4Addr>,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// Traffic to `global_ip:port` goes to `target:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRule {
    /// The export's name (a DNS label): the rule's comment.
    pub name: String,
    pub global_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
    /// Where connections go, spread evenly (`numgen`) over several.
    pub targets: Vec<SocketAddrV4>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("{op}: the `nft` command was not found; install the nftables package")]
    NotInstalled { op: &'static str },
    #[error("{op}: running nft: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: nft failed ({status}): {stderr}")]
    Failed {
        op: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{op}: unexpected output from nft: {detail}")]
    Output { op: &'static str, detail: String },
}

/// The whole nft script for the plan: creates the table if it is missing
/// (so that deleting never fails), deletes it and defines it anew, which
/// `nft -f` applies as one transaction.
pub fn render(plan: &NftPlan) -> String {
    format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        render_table(plan)
    )
}

/// The table block alone, in the form `nft -s list table inet strait`
/// prints it, comment included.
fn render_table(plan: &NftPlan) -> String {
    let body = render_body(plan);
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    format!("table inet {TABLE} {{\n\tcomment \"{COMMENT_PREFIX}{hash}\"\n{body}}}\n")
}

/// Everything inside the table block but its comment.
fn render_body(plan: &NftPlan) -> String {
    let (local4, local6) = normalize_subnets(&plan.local_subnets);
    let (remote4, remote6) = normalize_subnets(&plan.remote_subnets);
    let clamp = match plan.mss {
        Some(mss) => format!("tcp option maxseg size set {mss}"),
        None => "tcp option maxseg size set rt mtu".to_owned(),
    };
    let syn = "tcp flags syn / syn,rst";
    let mut out = String::new();
    set(&mut out, "local4", "ipv4_addr", &local4);
    set(&mut out, "local6", "ipv6_addr", &local6);
    set(&mut out, "remote4", "ipv4_addr", &remote4);
    set(&mut out, "remote6", "ipv6_addr", &remote6);

    use rule::*;
    let mut postrouting = Vec::new();
    if let Some(globalnet) = &plan.globalnet {
        for pod in &globalnet.pods {
            postrouting.push((
                format!(
                    "ip saddr {} ip daddr @remote4 counter snat ip to {}",
                    pod.address, pod.global_ip
                ),
                format!("{GLOBALNET_EGRESS} {}", pod.name),
            ));
        }
        for pool in globalnet
            .egress_pools
            .iter()
            .filter(|p| !p.sources.is_empty())
        {
            let sources: Vec<String> = pool.sources.iter().map(ToString::to_string).collect();
            postrouting.push((
                format!(
                    "ip saddr {{ {} }} ip daddr @remote4 counter snat ip to {}-{}",
                    sources.join(", "),
                    pool.first,
                    pool.last
                ),
                format!("{GLOBALNET_EGRESS} {}", pool.name),
            ));
        }
        let (first, last) = globalnet.egress;
        postrouting.push((
            format!("ip saddr @local4 ip daddr @remote4 counter snat ip to {first}-{last}"),
            GLOBALNET_EGRESS.to_owned(),
        ));
    }
    postrouting.extend(
        [
            (
                "ip saddr @local4 ip daddr @remote4 counter snat ip to ip saddr".into(),
                NO_MASQUERADE_LOCAL_TO_REMOTE_4,
            ),
            (
                "ip saddr @remote4 ip daddr @local4 counter snat ip to ip saddr".into(),
                NO_MASQUERADE_REMOTE_TO_LOCAL_4,
            ),
            (
                "ip6 saddr @local6 ip6 daddr @remote6 counter snat ip6 to ip6 saddr".into(),
                NO_MASQUERADE_LOCAL_TO_REMOTE_6,
            ),
            (
                "ip6 saddr @remote6 ip6 daddr @local6 counter snat ip6 to ip6 saddr".into(),
                NO_MASQUERADE_REMOTE_TO_LOCAL_6,
            ),
        ]
        .map(|(rule, comment): (String, &str)| (rule, comment.to_owned())),
    );
    chain(
        &mut out,
        "postrouting",
        "type nat hook postrouting priority srcnat - 10; policy accept;",
        &postrouting,
    );
    out.push('\n');
    if let Some(globalnet) = &plan.globalnet {
        let rules: Vec<(String, String)> = globalnet
            .ingress
            .iter()
            .filter(|r| !r.targets.is_empty())
            .map(|r| {
                let to = match r.targets.as_slice() {
                    [one] => one.to_string(),
                    many => format!(
                        "numgen inc mod {} map {{ {} }}",
                        many.len(),
                        many.iter()
                            .enumerate()
                            .map(|(i, t)| format!("{i} : {} . {}", t.ip(), t.port()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                (
                    format!(
                        "iifname \"{}\" ip daddr {} {} dport {} counter dnat ip to {to}",
                        globalnet.tunnel, r.global_ip, r.protocol, r.port
                    ),
                    format!("{GLOBALNET_INGRESS} {}", r.name),
                )
            })
            .chain(globalnet.pods.iter().map(|pod| {
                (
                    format!(
                        "iifname \"{}\" ip daddr {} counter dnat ip to {}",
                        globalnet.tunnel, pod.global_ip, pod.address
                    ),
                    format!("{GLOBALNET_INGRESS} {}", pod.name),
                )
            }))
            .collect();
        chain(
            &mut out,
            "prerouting",
            "type nat hook prerouting priority dstnat - 10; policy accept;",
            &rules,
        );
        out.push('\n');
    }
    chain(
        &mut out,
        "forward",
        "type filter hook forward priority filter - 10; policy accept;",
        &[
            (
                format!("ip daddr @remote4 {syn} counter {clamp}"),
                MSS_FORWARD_TO_REMOTE_4,
            ),
            (
                format!("ip saddr @remote4 {syn} counter {clamp}"),
                MSS_FORWARD_FROM_REMOTE_4,
            ),
            (
                format!("ip6 daddr @remote6 {syn} counter {clamp}"),
                MSS_FORWARD_TO_REMOTE_6,
            ),
            (
                format!("ip6 saddr @remote6 {syn} counter {clamp}"),
                MSS_FORWARD_FROM_REMOTE_6,
            ),
            (
                "ip daddr @remote4 counter accept".into(),
                ACCEPT_TO_REMOTE_4,
            ),
            (
                "ip saddr @remote4 counter accept".into(),
                ACCEPT_FROM_REMOTE_4,
            ),
            (
                "ip6 daddr @remote6 counter accept".into(),
                ACCEPT_TO_REMOTE_6,
            ),
            (
                "ip6 saddr @remote6 counter accept".into(),
                ACCEPT_FROM_REMOTE_6,
            ),
        ],
    );
    out.push('\n');
    chain(
        &mut out,
        "output",
        "type filter hook output priority filter - 10; policy accept;",
        &[
            (
                format!("ip daddr @remote4 {syn} counter {clamp}"),
                MSS_OUTPUT_TO_REMOTE_4,
            ),
            (
                format!("ip6 daddr @remote6 {syn} counter {clamp}"),
                MSS_OUTPUT_TO_REMOTE_6,
            ),
        ],
    );
    out
}

/// Splits subnets by family, clears host bits and merges overlapping and
/// adjacent ones (an interval set refuses overlapping elements), sorted.
fn normalize_subnets(subnets: &[IpNet]) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in subnets {
        match net.trunc() {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }
    (Ipv4Net::aggregate(&v4), Ipv6Net::aggregate(&v6))
}

/// An interval set; nft prints a one-address prefix as the address alone.
fn set<N: std::fmt::Display + Copy>(out: &mut String, name: &str, ty: &str, elements: &[N])
where
    IpNet: From<N>,
{
    out.push_str(&format!(
        "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n"
    ));
    if !elements.is_empty() {
        let elements: Vec<String> = elements
            .iter()
            .map(|&n| {
                let net = IpNet::from(n);
                if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                }
            })
            .collect();
        out.push_str(&format!("\t\telements = {{ {} }}\n", elements.join(", ")));
    }
    out.push_str("\t}\n\n");
}

fn chain<C: AsRef<str>>(out: &mut String, name: &str, hook: &str, rules: &[(String, C)]) {
    out.push_str(&format!("\tchain {name} {{\n\t\t{hook}\n"));
    for (rule, comment) in rules {
        let comment = comment.as_ref();
        out.push_str(&format!("\t\t{rule} comment \"{comment}\"\n"));
    }
    out.push_str("\t}\n");
}

/// A listing reduced to what identifies it: whitespace-separated tokens
/// (nft wraps long element lists), counter values dropped.
/// The rule comments of a listing or rendering, in order: which rules are
/// there, whatever nft's formatting of them.
fn rule_comments(text: &str) -> Vec<&str> {
    text.split("comment \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|comment| !comment.starts_with(COMMENT_PREFIX))
        .collect()
}

fn normalize_listing(text: &str) -> String {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        out.push(tokens[i]);
        if tokens[i] == "counter"
            && tokens.get(i + 1) == Some(&"packets")
            && tokens.get(i + 3) == Some(&"bytes")
        {
            i += 5;
        } else {
            i += 1;
        }
    }
    out.join(" ")
}

/// Applies the plan unless the kernel already holds what it renders.
///
/// It remembers the listing seen right after its last apply: a listing
/// that differs from it (someone flushed or changed the table) or a
/// changed plan leads to a new transaction. A fresh `NftTable` (after a
/// restart) adopts a table whose listing is exactly the rendering of the
/// plan, hash comment included, without writing.
#[derive(Debug, Default)]
pub struct NftTable {
    applied: Option<Applied>,
}

#[derive(Debug)]
struct Applied {
    /// The normalized rendering of the plan applied.
    rendered: String,
    /// The normalized listing seen right after applying it.
    listing: String,
}

impl NftTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes the table and applies `plan` in one transaction if the
    /// table is absent, was changed since the last apply, or the plan
    /// changed. Returns whether it wrote.
    pub fn ensure(&mut self, plan: &NftPlan) -> Result<bool, NftError> {
        let script = render(plan);
        let rendered = normalize_listing(&render_table(plan));
        if let Some(listing) = list_table("listing the strait table")? {
            let listing = normalize_listing(&listing);
            let unchanged = listing == rendered
                || self
                    .applied
                    .as_ref()
                    .is_some_and(|a| a.rendered == rendered && a.listing == listing);
            if unchanged {
                self.applied = Some(Applied { rendered, listing });
                return Ok(false);
            }
        }
        // Forget the old state first: if applying fails, the next call
        // must not mistake what is there for what was applied.
        self.applied = None;
        run_script("applying the strait table", &script)?;
        let listing =
            list_table("listing the strait table after applying it")?.ok_or(NftError::Output {
                op: "listing the strait table after applying it",
                detail: "the table is missing right after it was applied".into(),
            })?;
        let listing = normalize_listing(&listing);
        // Someone may have changed the table between our transaction and
        // this listing; remembering that as ours would hide it for good.
        self.applied = (rule_comments(&listing) == rule_comments(&rendered))
            .then_some(Applied { rendered, listing });
        Ok(true)
    }

    /// Deletes the table if it is there; returns whether it was.
    pub fn remove() -> Result<bool, NftError> {
        if list_table("listing the strait table")?.is_none() {
            return Ok(false);
        }
        run_script(
            "deleting the strait table",
            &format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"),
        )?;
        Ok(true)
    }
}

/// The packet counts of the table's rules, by rule comment; empty when the
/// table does not exist.
pub fn counters() -> Result<BTreeMap<String, u64>, NftError> {
    const OP: &str = "reading the strait table's counters";
    let out = nft(OP, &["-j", "list", "table", "inet", TABLE], None)?;
    match out {
        None => Ok(BTreeMap::new()),
        Some(json) => parse_counters(&json).map_err(|detail| NftError::Output { op: OP, detail }),
    }
}

/// Packet counts by rule comment from `nft -j list table` output.
fn parse_counters(json: &str) -> Result<BTreeMap<String, u64>, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let objects = value
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or("no \"nftables\" array")?;
    let mut counts = BTreeMap::new();
    for object in objects {
        let Some(rule) = object.get("rule") else {
            continue;
        };
        let Some(comment) = rule.get("comment").and_then(|c| c.as_str()) else {
            continue;
        };
        let packets = rule
            .get("expr")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
            .sum();
        counts.insert(comment.to_owned(), packets);
    }
    Ok(counts)
}

/// `nft -s list table inet strait`; `None` when the table does not exist.
fn list_table(op: &'static str) -> Result<Option<String>, NftError> {
    nft(op, &["-s", "list", "table", "inet", TABLE], None)
}

/// Runs `script` with `nft -f -`: one transaction.
fn run_script(op: &'static str, script: &str) -> Result<(), NftError> {
    match nft(op, &["-f", "-"], Some(script))? {
        Some(_) => Ok(()),
        None => Err(NftError::Output {
            op,
            detail: "nft reported a missing object".into(),
        }),
    }
}

/// Runs nft; `Ok(None)` when it failed because the object does not exist.
fn nft(op: &'static str, args: &[&str], stdin: Option<&str>) -> Result<Option<String>, NftError> {
    let spawn_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NftError::NotInstalled { op }
        } else {
            NftError::Io { op, source }
        }
    };
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(input) = stdin {
        // nft reads its whole input before it writes anything, so this
        // cannot dead-lock on a full pipe.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .map_err(|source| NftError::Io { op, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NftError::Io { op, source })?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stdin.is_none() && stderr.contains("No such file or directory") {
        return Ok(None);
    }
    Err(NftError::Failed {
        op,
        status: out.status,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn lines(script: &str) -> Vec<&str> {
        script.lines().map(str::trim).collect()
    }

    /// The `elements = ...` line of set `name`, if any.
    fn elements<'a>(script: &'a str, name: &str) -> Option<&'a str> {
        let start = script.find(&format!("set {name} {{"))?;
        script[start..]
            .lines()
            .map(str::trim)
            .take_while(|l| *l != "}")
            .find(|l| l.starts_with("elements"))
    }

    #[test]
    fn empty_plan_has_every_chain_and_empty_sets() {
        let script = render(&NftPlan::default());
        let l = lines(&script);
        assert_eq!(
            &l[..3],
            &[
                "add table inet strait",
                "delete table inet strait",
                "table inet strait {"
            ]
        );
        assert!(
            l[3].starts_with("comment \"strait plan sha256:"),
            "{}",
            l[3]
        );
        for name in ["local4", "local6", "remote4", "remote6"] {
            assert!(script.contains(&format!("set {name} {{")), "{script}");
            assert_eq!(elements(&script, name), None, "{script}");
        }
        assert!(l.contains(&"type nat hook postrouting priority srcnat - 10; policy accept;"));
        assert!(l.contains(&"type filter hook forward priority filter - 10; policy accept;"));
        assert!(l.contains(&"type filter hook output priority filter - 10; policy accept;"));
        assert_eq!(l.last(), Some(&"}"));
        assert!(!script.contains("elements"));
    }

    #[test]
    fn ipv4_plan() {
        let plan = NftPlan {
            local_subnets: nets(&["10.42.0.0/16", "10.43.0.0/16"]),
            remote_subnets: nets(&["198.51.100.0/24", "192.0.2.7/32"]),
            mss: None,
            globalnet: None,
        };
        let script = render(&plan);
        assert_eq!(
            elements(&script, "local4"),
            Some("elements = { 10.42.0.0/15 }")
        );
        assert_eq!(
            elements(&script, "remote4"),
            Some("elements = { 192.0.2.7, 198.51.100.0/24 }")
        );
        assert_eq!(elements(&script, "local6"), None);
        assert_eq!(elements(&script, "remote6"), None);
        let l = lines(&script);
        for rule in [
            "ip saddr @local4 ip daddr @remote4 counter snat ip to ip saddr comment \"no-masquerade local-to-remote ipv4\"",
            "ip saddr @remote4 ip daddr @local4 counter snat ip to ip saddr comment \"no-masquerade remote-to-local ipv4\"",
            "ip daddr @remote4 tcp flags syn / syn,rst counter tcp option maxseg size set rt mtu comment \"mss-clamp forward to-remote ipv4\"",
            "ip saddr @remote4 tcp flags syn / syn,rst counter tcp option maxseg size set rt mtu comment \"mss-clamp forward from-remote ipv4\"",
            "ip daddr @remote4 counter accept comment \"accept forward to-remote ipv4\"",
            "ip saddr @remote4 counter accept comment \"accept forward from-remote ipv4\"",
            "ip daddr @remote4 tcp flags syn / syn,rst counter tcp option maxseg size set rt mtu comment \"mss-clamp output to-remote ipv4\"",
        ] {
            assert!(l.contains(&rule), "missing {rule} in\n{script}");
        }
    }

    #[test]
    fn dual_stack_plan() {
        let plan = NftPlan {
            local_subnets: nets(&["10.42.0.0/16", "2001:db8:42::/56"]),
            remote_subnets: nets(&["2001:db8:99::1/128", "198.51.100.0/24", "2001:db8:100::/48"]),
            mss: None,
            globalnet: None,
        };
        let script = render(&plan);
        assert_eq!(
            elements(&script, "local4"),
            Some("elements = { 10.42.0.0/16 }")
        );
        assert_eq!(
            elements(&script, "local6"),
            Some("elements = { 2001:db8:42::/56 }")
        );
        assert_eq!(
            elements(&script, "remote4"),
            Some("elements = { 198.51.100.0/24 }")
        );
        assert_eq!(
            elements(&script, "remote6"),
            Some("elements = { 2001:db8:99::1, 2001:db8:100::/48 }")
        );
        let l = lines(&script);
        for rule in [
            "ip6 saddr @local6 ip6 daddr @remote6 counter snat ip6 to ip6 saddr comment \"no-masquerade local-to-remote ipv6\"",
            "ip6 saddr @remote6 ip6 daddr @local6 counter snat ip6 to ip6 saddr comment \"no-masquerade remote-to-local ipv6\"",
            "ip6 daddr @remote6 tcp flags syn / syn,rst counter tcp option maxseg size set rt mtu comment \"mss-clamp forward to-remote ipv6\"",
            "ip6 saddr @remote6 counter accept comment \"accept forward from-remote ipv6\"",
            "ip6 daddr @remote6 tcp flags syn / syn,rst counter tcp option maxseg size set rt mtu comment \"mss-clamp output to-remote ipv6\"",
        ] {
            assert!(l.contains(&rule), "missing {rule} in\n{script}");
        }
    }

    #[test]
    fn fixed_mss() {
        let plan = NftPlan {
            remote_subnets: nets(&["198.51.100.0/24"]),
            mss: Some(1360),
            ..NftPlan::default()
        };
        let script = render(&plan);
        assert!(!script.contains("rt mtu"), "{script}");
        let clamps = script
            .lines()
            .filter(|l| l.contains("tcp option maxseg size set 1360"))
            .count();
        assert_eq!(clamps, 6, "{script}");
    }

    #[test]
    fn render_is_deterministic_sorted_and_deduplicated() {
        let a = NftPlan {
            local_subnets: nets(&[
                "10.1.0.0/16",
                "10.0.0.0/16",
                "10.1.0.0/16",
                "2001:db8:2::/48",
            ]),
            remote_subnets: nets(&["198.51.100.0/25", "198.51.100.128/25", "198.51.100.9/32"]),
            mss: None,
            globalnet: None,
        };
        let b = NftPlan {
            local_subnets: nets(&["2001:db8:2::/48", "10.0.0.0/16", "10.1.5.6/16"]),
            remote_subnets: nets(&["198.51.100.128/25", "198.51.100.0/24"]),
            mss: None,
            globalnet: None,
        };
        assert_eq!(render(&a), render(&a));
        assert_eq!(render(&a), render(&b));
        let script = render(&a);
        assert_eq!(
            elements(&script, "local4"),
            Some("elements = { 10.0.0.0/15 }")
        );
        assert_eq!(
            elements(&script, "remote4"),
            Some("elements = { 198.51.100.0/24 }")
        );
        let c = NftPlan {
            local_subnets: nets(&["10.9.0.0/16", "10.0.0.0/16"]),
            ..NftPlan::default()
        };
        assert_eq!(
            elements(&render(&c), "local4"),
            Some("elements = { 10.0.0.0/16, 10.9.0.0/16 }")
        );
    }

    #[test]
    fn hash_comment_follows_the_plan() {
        let comment = |plan: &NftPlan| {
            render(plan)
                .lines()
                .find(|l| l.contains("comment \"strait plan"))
                .unwrap()
                .to_owned()
        };
        let a = NftPlan::default();
        let b = NftPlan {
            mss: Some(1300),
            ..NftPlan::default()
        };
        assert_eq!(comment(&a), comment(&a.clone()));
        assert_ne!(comment(&a), comment(&b));
        // sha256 in hex: 64 digits.
        let hash = comment(&a)
            .trim()
            .trim_start_matches("comment \"strait plan sha256:")
            .trim_end_matches('"')
            .to_owned();
        assert_eq!(hash.len(), 64);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn rule_comments_tell_a_flushed_table_from_a_whole_one() {
        let plan = NftPlan {
            local_subnets: vec!["10.1.0.0/16".parse().unwrap()],
            remote_subnets: vec!["10.2.0.0/16".parse().unwrap()],
            mss: None,
            globalnet: None,
        };
        let whole = normalize_listing(&render_table(&plan));
        let rules = rule_comments(&whole);
        assert!(rules.len() > 4, "{rules:?}");
        // What `nft flush table` leaves: the table, its comment, sets and
        // chains, no rules.
        let flushed: String = render_table(&plan)
            .lines()
            .filter(|l| !l.contains("comment \"") || l.contains(COMMENT_PREFIX))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(rule_comments(&normalize_listing(&flushed)).is_empty());
    }

    #[test]
    fn normalized_listing_ignores_counters_and_wrapping() {
        let listed = "table inet strait {\n\tset s {\n\t\telements = { 10.0.0.0/8,\n\t\t\t     192.0.2.0/24 }\n\t}\n\tchain c {\n\t\tip daddr @s counter packets 12 bytes 3400 accept comment \"x\"\n\t}\n}\n";
        let rendered = "table inet strait {\n\tset s {\n\t\telements = { 10.0.0.0/8, 192.0.2.0/24 }\n\t}\n\n\tchain c {\n\t\tip daddr @s counter accept comment \"x\"\n\t}\n}\n";
        assert_eq!(normalize_listing(listed), normalize_listing(rendered));
        assert_ne!(
            normalize_listing(rendered),
            normalize_listing(&rendered.replace("counter ", ""))
        );
    }

    #[test]
    fn counters_by_comment() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "strait", "handle": 2}},
            {"rule": {"family": "inet", "table": "strait", "chain": "postrouting", "handle": 8,
              "comment": "no-masquerade local-to-remote ipv4",
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@local4"}},
                       {"counter": {"packets": 3, "bytes": 180}}, {"snat": {"family": "ip", "addr": {"payload": {"protocol": "ip", "field": "saddr"}}}}]}},
            {"rule": {"family": "inet", "table": "strait", "chain": "forward", "handle": 9,
              "comment": "accept forward to-remote ipv4",
              "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "strait", "chain": "forward", "handle": 10,
              "expr": [{"accept": null}]}}]}"#;
        let counts = parse_counters(json).unwrap();
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[rule::NO_MASQUERADE_LOCAL_TO_REMOTE_4], 3);
        assert_eq!(counts[rule::ACCEPT_TO_REMOTE_4], 0);
        assert!(parse_counters("{}").is_err());
    }

    #[test]
    fn rule_comments_are_unique() {
        let script = render(&NftPlan::default());
        let comments: Vec<&str> = script
            .lines()
            .filter(|l| l.contains(" comment \""))
            .map(|l| l.rsplit(" comment ").next().unwrap())
            .collect();
        let unique: std::collections::BTreeSet<_> = comments.iter().collect();
        assert_eq!(comments.len(), 14);
        assert_eq!(unique.len(), comments.len());
    }

    fn globalnet_plan(exports: &[(&str, &str)]) -> NftPlan {
        NftPlan {
            local_subnets: nets(&["10.1.0.0/16", "10.101.0.0/16"]),
            remote_subnets: nets(&["242.1.0.0/16"]),
            mss: None,
            globalnet: Some(GlobalnetNft {
                tunnel: "strait-wg".into(),
                egress: ("242.0.0.1".parse().unwrap(), "242.0.0.8".parse().unwrap()),
                egress_pools: Vec::new(),
                ingress: exports
                    .iter()
                    .map(|(name, ip)| IngressRule {
                        name: name.to_string(),
                        global_ip: ip.parse().unwrap(),
                        protocol: Protocol::Tcp,
                        port: 7777,
                        targets: vec!["10.1.1.2:7777".parse().unwrap()],
                    })
                    .collect(),
                pods: Vec::new(),
            }),
        }
    }

    #[test]
    fn globalnet_egress_snat_comes_before_the_identity_snat() {
        let script = render(&globalnet_plan(&[("web", "242.0.0.9")]));
        let l = lines(&script);
        let egress = l
            .iter()
            .position(|r| {
                *r == "ip saddr @local4 ip daddr @remote4 counter snat ip to 242.0.0.1-242.0.0.8 comment \"globalnet egress\""
            })
            .unwrap_or_else(|| panic!("no egress SNAT in\n{script}"));
        let identity = l
            .iter()
            .position(|r| r.ends_with("comment \"no-masquerade local-to-remote ipv4\""))
            .unwrap();
        assert!(egress < identity, "{script}");
        assert!(l.contains(&"type nat hook prerouting priority dstnat - 10; policy accept;"));
        assert!(l.contains(
            &"iifname \"strait-wg\" ip daddr 242.0.0.9 tcp dport 7777 counter dnat ip to 10.1.1.2:7777 comment \"globalnet ingress web\""
        ));
    }

    #[test]
    fn selected_pods_leave_from_their_pool_before_the_clusters() {
        let mut plan = globalnet_plan(&[]);
        plan.globalnet.as_mut().unwrap().egress_pools = vec![
            EgressPool {
                name: "shop/db".into(),
                sources: vec!["10.1.1.2".parse().unwrap(), "10.1.2.2".parse().unwrap()],
                first: "242.0.0.9".parse().unwrap(),
                last: "242.0.0.10".parse().unwrap(),
            },
            EgressPool {
                name: "shop/idle".into(),
                sources: Vec::new(),
                first: "242.0.0.11".parse().unwrap(),
                last: "242.0.0.11".parse().unwrap(),
            },
        ];
        let script = render(&plan);
        let l = lines(&script);
        let pool = l
            .iter()
            .position(|r| *r == "ip saddr { 10.1.1.2, 10.1.2.2 } ip daddr @remote4 counter snat ip to 242.0.0.9-242.0.0.10 comment \"globalnet egress shop/db\"")
            .unwrap_or_else(|| panic!("no pool rule in\n{script}"));
        let cluster = l
            .iter()
            .position(|r| r.ends_with("comment \"globalnet egress\""))
            .unwrap();
        assert!(pool < cluster, "{script}");
        assert!(
            !script.contains("shop/idle"),
            "a pool without pods has no rule"
        );
    }

    #[test]
    fn a_headless_services_pod_is_translated_both_ways_ahead_of_every_pool() {
        let mut plan = globalnet_plan(&[]);
        let globalnet = plan.globalnet.as_mut().unwrap();
        globalnet.pods = vec![PodTranslation {
            name: "shop/pod-db-0".into(),
            global_ip: "242.0.0.12".parse().unwrap(),
            address: "10.1.1.2".parse().unwrap(),
        }];
        globalnet.egress_pools = vec![EgressPool {
            name: "shop/db".into(),
            sources: vec!["10.1.1.2".parse().unwrap()],
            first: "242.0.0.9".parse().unwrap(),
            last: "242.0.0.9".parse().unwrap(),
        }];
        let script = render(&plan);
        let l = lines(&script);
        assert!(l.contains(
            &"iifname \"strait-wg\" ip daddr 242.0.0.12 counter dnat ip to 10.1.1.2 comment \"globalnet ingress shop/pod-db-0\""
        ), "{script}");
        let pod = l
            .iter()
            .position(|r| *r == "ip saddr 10.1.1.2 ip daddr @remote4 counter snat ip to 242.0.0.12 comment \"globalnet egress shop/pod-db-0\"")
            .unwrap_or_else(|| panic!("no pod SNAT in\n{script}"));
        let pool = l
            .iter()
            .position(|r| r.ends_with("comment \"globalnet egress shop/db\""))
            .unwrap();
        assert!(pod < pool, "{script}");
    }

    #[test]
    fn an_export_with_several_targets_spreads_connections_over_them() {
        let mut plan = globalnet_plan(&[("shop/web", "242.0.0.9")]);
        let globalnet = plan.globalnet.as_mut().unwrap();
        globalnet.ingress[0].targets = vec![
            "10.1.1.2:8080".parse().unwrap(),
            "10.1.2.2:8080".parse().unwrap(),
        ];
        let script = render(&plan);
        assert!(lines(&script).contains(
            &"iifname \"strait-wg\" ip daddr 242.0.0.9 tcp dport 7777 counter dnat ip to numgen inc mod 2 map { 0 : 10.1.1.2 . 8080, 1 : 10.1.2.2 . 8080 } comment \"globalnet ingress shop/web\""
        ), "{script}");
        plan.globalnet.as_mut().unwrap().ingress[0].targets.clear();
        assert!(
            !render(&plan).contains("dnat"),
            "an export without targets has no rule"
        );
    }

    #[test]
    fn without_globalnet_the_table_is_as_before() {
        let plain = NftPlan {
            globalnet: None,
            ..globalnet_plan(&[])
        };
        let script = render(&plain);
        assert!(!script.contains("prerouting"), "{script}");
        assert!(!script.contains("globalnet"), "{script}");
        // Exports change only their own rules; the rest of the table stays.
        let one = render(&globalnet_plan(&[("web", "242.0.0.9")]));
        let two = render(&globalnet_plan(&[
            ("web", "242.0.0.9"),
            ("db", "242.0.0.10"),
        ]));
        assert_ne!(one, two);
        assert_eq!(rule_comments(&two).len(), rule_comments(&one).len() + 1);
    }
}
