//! Simulated clusters for the agent's network-namespace tests and the demo.
//!
//! A [`ClusterSet`] is built from a small declarative description
//! ([`ClusterSpec`], [`NodeSpec`]). Cluster number `k` (its `index`) gets:
//!
//! - a LAN: a bridge `br0` in a namespace of its own, joining its nodes
//!   (`172.16.k.0/24`, node `i` at `172.16.k.(10+i)` on `lan0`);
//! - per node a namespace with `ip_forward` on; node `i`'s pods live in
//!   `10.k.(i+1).0/24` (of the default pod CIDR `10.k.0.0/16`);
//! - per pod a namespace with a veth `eth0` to its node (`pod<j>` there),
//!   address `10.k.(i+1).(j+2)/32`, the default route via the node's
//!   `10.k.(i+1).1` (the point-to-point layout of the CNI `ptp` plugin);
//!   a node without pods holds `10.k.(i+1).1/32` on a dummy `cni0`, so
//!   every node has an address in its pod subnet (the route agent's
//!   source for host-network traffic to remote clusters);
//! - "host-gw" routes between its nodes for each other's pod subnets, as a
//!   CNI would program;
//! - on every gateway-capable node a second link `wan0` to the WAN: a
//!   bridge in the WAN namespace (`198.51.100.0/24`, node `i` of cluster
//!   `k` at `198.51.100.(10k+1+i)`), the address other clusters reach it at.
//!
//! Services get `10.(100+k).0.0/16`. Every name is unique to the run; every
//! namespace, link and process goes away when the set is dropped, also
//! when a test panics (and then the tail of every agent log is printed).
//! [`ClusterSet::persist`] keeps a set running after the process exits and
//! [`teardown_persisted`] removes it later: the demo's `up` and `down`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_yaml::Value;

use crate::{run, unique_id, wait_until, Netns, Process, Scratch};

/// The agent's WireGuard TUN device (fixed by the agent's contract).
pub const TUNNEL_IFNAME: &str = "strait-wg";
/// Where every agent serves `/metrics`, `/healthz` and `/readyz`.
pub const METRICS_PORT: u16 = 9898;
/// The port of the echo server in every pod (see `src/bin/tcp-echo.rs`).
pub const ECHO_PORT: u16 = 7777;
/// The cluster-set pre-shared key string of every simulated set.
pub const PSK: &str = "strait-netns-tests-psk";

/// One node of a simulated cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Unique within its cluster.
    pub name: String,
    /// May be the cluster's gateway: it gets a WAN link and `gateway: true`.
    pub gateway: bool,
    /// How many pods run on it.
    pub pods: usize,
}

impl NodeSpec {
    pub fn gateway(name: &str, pods: usize) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            gateway: true,
            pods,
        }
    }

    pub fn worker(name: &str, pods: usize) -> NodeSpec {
        NodeSpec {
            name: name.to_string(),
            gateway: false,
            pods,
        }
    }
}

/// One simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The cluster id (a DNS label).
    pub id: String,
    /// `k`, 1..=24, unique in the set: it picks the LAN, the WAN addresses
    /// and the default CIDRs.
    pub index: u8,
    pub nodes: Vec<NodeSpec>,
    /// IPv4, a /23 or larger: node `i` gets its `(i+1)`-th /24.
    pub pod_cidr: String,
    pub service_cidr: String,
}

impl ClusterSpec {
    /// A cluster with the default CIDRs of its index.
    pub fn new(id: &str, index: u8, nodes: Vec<NodeSpec>) -> ClusterSpec {
        assert!(
            (1..=24).contains(&index),
            "cluster index {index} out of 1..=24"
        );
        ClusterSpec {
            id: id.to_string(),
            index,
            nodes,
            pod_cidr: format!("10.{index}.0.0/16"),
            service_cidr: format!("10.{}.0.0/16", 100 + u32::from(index)),
        }
    }

    /// The same cluster with the given pod and service CIDRs (clusters of
    /// a set may then overlap: globalnet's case).
    pub fn with_cidrs(mut self, pod_cidr: &str, service_cidr: &str) -> ClusterSpec {
        self.pod_cidr = pod_cidr.to_string();
        self.service_cidr = service_cidr.to_string();
        self
    }

    /// Issue 4's shape: one node, `<id>-gw`, the gateway, with `pods` pods.
    pub fn single_gateway(id: &str, index: u8, pods: usize) -> ClusterSpec {
        ClusterSpec::new(
            id,
            index,
            vec![NodeSpec::gateway(&format!("{id}-gw"), pods)],
        )
    }

    /// The gateway `<id>-gw` and one worker `<id>-w1`, a pod on each.
    pub fn gateway_and_worker(id: &str, index: u8) -> ClusterSpec {
        ClusterSpec::new(
            id,
            index,
            vec![
                NodeSpec::gateway(&format!("{id}-gw"), 1),
                NodeSpec::worker(&format!("{id}-w1"), 1),
            ],
        )
    }

    /// Issue 5's shape: the gateway `<id>-gw` and two workers `<id>-w1`,
    /// `<id>-w2`, a pod on each.
    pub fn three_nodes(id: &str, index: u8) -> ClusterSpec {
        ClusterSpec::new(
            id,
            index,
            vec![
                NodeSpec::gateway(&format!("{id}-gw"), 1),
                NodeSpec::worker(&format!("{id}-w1"), 1),
                NodeSpec::worker(&format!("{id}-w2"), 1),
            ],
        )
    }
}

/// How a set is built and its agents run.
#[derive(Debug, Clone)]
pub struct Options {
    pub strait_bin: PathBuf,
    /// When set, every pod runs `tcp-echo serve` on [`ECHO_PORT`] and
    /// [`Pod::tcp_request`] works. Tests pass `env!("CARGO_BIN_EXE_tcp-echo")`.
    pub echo_bin: Option<PathBuf>,
    /// Where configs, keys, state dirs and the broker live; `None`: a
    /// scratch directory removed on drop.
    pub root: Option<PathBuf>,
    /// Where logs go; `None`: next to each node's config.
    pub log_dir: Option<PathBuf>,
    /// Appends a line per namespace and process made (see
    /// [`ClusterSet::persist`] and [`teardown_persisted`]).
    pub journal: Option<PathBuf>,
    pub rust_log: String,
    pub log_json: bool,
    pub health_interval_ms: u64,
    pub max_lost: u32,
    pub psk: String,
    pub udp_port: u16,
    /// How long [`ClusterSet::build`] waits for each agent's `/readyz`.
    pub ready_timeout: Duration,
    /// Agents in a process group of their own (they survive Ctrl-C of
    /// the process that started them).
    pub detach: bool,
    /// Raw top-level YAML appended to every node's agent config.
    pub extra_config: String,
    /// Globalnet on: extra YAML lines of the `globalnet` section (which
    /// gets `enabled: true` and `exports_dir: <node dir>/exports`).
    pub globalnet: Option<String>,
}

impl Options {
    /// Defaults: the workspace's `strait`, no echo servers, a scratch root.
    pub fn new() -> Options {
        Options::using(crate::strait_bin())
    }

    /// The defaults with a given `strait` binary.
    pub fn using(strait_bin: PathBuf) -> Options {
        Options {
            strait_bin,
            echo_bin: None,
            root: None,
            log_dir: None,
            journal: None,
            rust_log: "info".into(),
            log_json: false,
            health_interval_ms: 1000,
            max_lost: 5,
            psk: PSK.into(),
            udp_port: 4500,
            ready_timeout: Duration::from_secs(30),
            detach: false,
            extra_config: String::new(),
            globalnet: None,
        }
    }

    pub fn with_echo(mut self, echo_bin: impl Into<PathBuf>) -> Options {
        self.echo_bin = Some(echo_bin.into());
        self
    }
}

impl Default for Options {
    fn default() -> Options {
        Options::new()
    }
}

/// Appends what was made to the journal file, when there is one.
#[derive(Debug, Clone)]
struct Journal(Option<PathBuf>);

impl Journal {
    fn append(&self, line: &str) {
        if let Some(path) = &self.0 {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("opening journal {}: {e}", path.display()));
            writeln!(file, "{line}").expect("writing journal");
        }
    }

    fn netns(&self, tag: &str) -> Netns {
        let ns = Netns::new(tag);
        self.append(&format!("netns {}", ns.name()));
        ns
    }

    fn process(&self, process: &Process, label: &str) {
        let pid = process.pid();
        let start = process_start_time(pid).unwrap_or(0);
        self.append(&format!("pid {pid} {start} {label}"));
    }
}

/// How a node's agent is launched.
#[derive(Debug, Clone)]
struct Launch {
    strait_bin: PathBuf,
    rust_log: String,
    log_json: bool,
    detach: bool,
    journal: Journal,
    /// More environment of the agent (see [`Node::set_agent_env`]).
    env: Vec<(String, String)>,
}

/// A set of simulated clusters sharing one directory broker and one WAN.
pub struct ClusterSet {
    // Fields drop in order: agents and pods before the LANs and the WAN.
    clusters: Vec<Cluster>,
    wan: Option<Netns>,
    broker: Broker,
    options: Options,
    root: PathBuf,
    journal: Journal,
    _scratch: Option<Scratch>,
}

impl ClusterSet {
    /// Builds every cluster, starts every agent and waits until each
    /// answers `/readyz`.
    pub fn build(specs: &[ClusterSpec], options: Options) -> ClusterSet {
        let mut set = ClusterSet::empty(options);
        for spec in specs {
            set.add_cluster(spec.clone());
        }
        for spec in specs {
            set.start_cluster(&spec.id);
        }
        for spec in specs {
            set.wait_cluster_ready(&spec.id);
        }
        set
    }

    /// A set with its WAN and broker directory and no cluster yet.
    pub fn empty(options: Options) -> ClusterSet {
        crate::require_root();
        let (root, scratch) = match &options.root {
            Some(root) => {
                std::fs::create_dir_all(root).expect("creating the set's root directory");
                (root.clone(), None)
            }
            None => {
                let scratch = Scratch::new("clusters");
                (scratch.path(""), Some(scratch))
            }
        };
        if let Some(dir) = &options.log_dir {
            std::fs::create_dir_all(dir).expect("creating the log directory");
        }
        let journal = Journal(options.journal.clone());
        let broker = Broker::new(root.join("broker"));
        std::fs::create_dir_all(&broker.path).expect("creating the broker directory");
        let wan = journal.netns("wan");
        wan.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        wan.ok(&["ip", "link", "set", "br0", "up"]);
        ClusterSet {
            clusters: Vec::new(),
            wan: Some(wan),
            broker,
            options,
            root,
            journal,
            _scratch: scratch,
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The WAN namespace (its bridge `br0` joins the gateway nodes).
    pub fn wan(&self) -> &Netns {
        self.wan.as_ref().expect("the WAN of a persisted set")
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn cluster(&self, id: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.spec.id == id)
            .unwrap_or_else(|| panic!("no cluster {id}"))
    }

    pub fn cluster_mut(&mut self, id: &str) -> &mut Cluster {
        self.clusters
            .iter_mut()
            .find(|c| c.spec.id == id)
            .unwrap_or_else(|| panic!("no cluster {id}"))
    }

    /// Makes a cluster's namespaces, links, routes, pods (with their echo
    /// servers) and agent configs; its agents are not started.
    pub fn add_cluster(&mut self, spec: ClusterSpec) -> &mut Cluster {
        for other in &self.clusters {
            assert_ne!(other.spec.id, spec.id, "two clusters named {}", spec.id);
            assert_ne!(
                other.spec.index, spec.index,
                "two clusters numbered {}",
                spec.index
            );
        }
        assert!(!spec.nodes.is_empty(), "cluster {} has no node", spec.id);
        assert!(spec.nodes.len() <= 9, "at most 9 nodes per cluster");
        let k = spec.index;
        let lan = self.journal.netns(&format!("{}-lan", spec.id));
        lan.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.ok(&["ip", "link", "set", "br0", "up"]);
        self.clusters.push(Cluster {
            nodes: Vec::new(),
            lan,
            spec: spec.clone(),
        });
        let at = self.clusters.len() - 1;
        let (pod_base, _) = parse_v4_cidr(&spec.pod_cidr);
        for (i, node_spec) in spec.nodes.iter().enumerate() {
            let node_ns = self
                .journal
                .netns(&format!("{}-{}", spec.id, node_spec.name));
            let dir = self.root.join(&spec.id).join(&node_spec.name);
            std::fs::create_dir_all(&dir).expect("creating a node directory");
            let log_path = match &self.options.log_dir {
                Some(logs) => logs.join(format!("{}-{}.log", spec.id, node_spec.name)),
                None => dir.join("agent.log"),
            };
            let lan_ip = Ipv4Addr::new(172, 16, k, 10 + i as u8);
            let wan_ip = node_spec
                .gateway
                .then(|| Ipv4Addr::new(198, 51, 100, 10 * k + 1 + i as u8));
            let pod_subnet_base = add_to_v4(pod_base, (i as u32 + 1) * 256);
            let node = Node {
                agent: None,
                pods: Vec::new(),
                ns: node_ns,
                cluster_id: spec.id.clone(),
                name: node_spec.name.clone(),
                index: i,
                gateway: node_spec.gateway,
                lan_ip,
                wan_ip,
                pod_gateway: add_to_v4(pod_subnet_base, 1),
                pod_subnet: format!("{pod_subnet_base}/24"),
                config_path: dir.join("config.yaml"),
                key_file: dir.join("private.key"),
                state_dir: dir.join("run"),
                log_path,
                dir,
                launch: Launch {
                    strait_bin: self.options.strait_bin.clone(),
                    rust_log: self.options.rust_log.clone(),
                    log_json: self.options.log_json,
                    detach: self.options.detach,
                    journal: self.journal.clone(),
                    env: Vec::new(),
                },
            };
            node.ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let lan_ns = &self.clusters[at].lan;
            crate::veth_pair(&node.ns, "lan0", lan_ns, &format!("n{i}"));
            lan_ns.ok(&["ip", "link", "set", &format!("n{i}"), "master", "br0", "up"]);
            node.ns
                .ok(&["ip", "addr", "add", &format!("{lan_ip}/24"), "dev", "lan0"]);
            node.ns.ok(&["ip", "link", "set", "lan0", "up"]);
            if let Some(wan_ip) = wan_ip {
                let port = format!("c{k}n{i}");
                let wan = self.wan.as_ref().expect("the WAN of a persisted set");
                crate::veth_pair(&node.ns, "wan0", wan, &port);
                wan.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
                node.ns
                    .ok(&["ip", "addr", "add", &format!("{wan_ip}/24"), "dev", "wan0"]);
                node.ns.ok(&["ip", "link", "set", "wan0", "up"]);
            }
            self.clusters[at].nodes.push(node);
            for j in 0..node_spec.pods {
                let pod = self.make_pod(at, i, j);
                self.clusters[at].nodes[i].pods.push(pod);
            }
            if node_spec.pods == 0 {
                // The node's own address in its pod subnet, as a CNI's
                // bridge or host-side interface would hold it.
                let node = &self.clusters[at].nodes[i];
                let cni = format!("{}/32", node.pod_gateway);
                node.ns.ok(&["ip", "link", "add", "cni0", "type", "dummy"]);
                node.ns.ok(&["ip", "addr", "add", &cni, "dev", "cni0"]);
                node.ns.ok(&["ip", "link", "set", "cni0", "up"]);
            }
        }
        // What a host-gw CNI programs: each node reaches the other nodes'
        // pod subnets over the LAN.
        let cluster = &self.clusters[at];
        for node in &cluster.nodes {
            for other in cluster.nodes.iter().filter(|o| o.index != node.index) {
                node.ns.ok(&[
                    "ip",
                    "route",
                    "add",
                    &other.pod_subnet,
                    "via",
                    &other.lan_ip.to_string(),
                    "dev",
                    "lan0",
                ]);
            }
        }
        for node in &cluster.nodes {
            let config = agent_config(&cluster.spec, node, &self.broker, &self.options);
            std::fs::write(&node.config_path, config).expect("writing an agent config");
        }
        &mut self.clusters[at]
    }

    fn make_pod(&self, at: usize, i: usize, j: usize) -> Pod {
        let cluster = &self.clusters[at];
        let node = &cluster.nodes[i];
        let name = format!("{}-p{j}", node.name);
        let ns = self.journal.netns(&format!("{}-{name}", cluster.spec.id));
        let ip = add_to_v4(node.pod_gateway, 1 + j as u32);
        let node_if = format!("pod{j}");
        crate::veth_pair(&ns, "eth0", &node.ns, &node_if);
        let gw = node.pod_gateway.to_string();
        node.ns
            .ok(&["ip", "addr", "add", &format!("{gw}/32"), "dev", &node_if]);
        node.ns.ok(&["ip", "link", "set", &node_if, "up"]);
        ns.ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        ns.ok(&["ip", "route", "add", &gw, "dev", "eth0", "scope", "link"]);
        ns.ok(&["ip", "route", "add", "default", "via", &gw, "dev", "eth0"]);
        node.ns.ok(&[
            "ip",
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            &node_if,
            "scope",
            "link",
        ]);
        let mut pod = Pod {
            echo: None,
            ns,
            name,
            cluster_id: cluster.spec.id.clone(),
            node: node.name.clone(),
            ip,
            echo_bin: self.options.echo_bin.clone(),
        };
        if let Some(bin) = &self.options.echo_bin {
            let log = match &self.options.log_dir {
                Some(logs) => logs.join(format!("{}-{}-echo.log", pod.cluster_id, pod.name)),
                None => node.dir.join(format!("{}-echo.log", pod.name)),
            };
            let bin = bin.to_string_lossy();
            let listen = format!("0.0.0.0:{ECHO_PORT}");
            let process = spawn(
                &pod.ns,
                &[&bin, "serve", &listen, &pod.tag()],
                &[],
                &log,
                self.options.detach,
            );
            self.journal
                .process(&process, &format!("echo {}", pod.ns.name()));
            wait_until(
                &format!("the echo server of pod {}", pod.name),
                Duration::from_secs(10),
                || process.log().contains("listening"),
            );
            pod.echo = Some(process);
        }
        pod
    }

    /// Starts the agent of every node of a cluster (not waiting).
    pub fn start_cluster(&mut self, id: &str) {
        for node in &mut self.cluster_mut(id).nodes {
            node.start_agent();
        }
    }

    /// Waits until every agent of a cluster answers `/readyz`.
    pub fn wait_cluster_ready(&mut self, id: &str) {
        let limit = self.options.ready_timeout;
        for node in &mut self.cluster_mut(id).nodes {
            node.wait_ready(limit);
        }
    }

    /// Adds a cluster, starts its agents and waits until they are ready.
    pub fn join_cluster(&mut self, spec: ClusterSpec) -> &mut Cluster {
        let id = spec.id.clone();
        self.add_cluster(spec);
        self.start_cluster(&id);
        self.wait_cluster_ready(&id);
        self.cluster_mut(&id)
    }

    /// Waits until every cluster's Gateway status in the broker lists
    /// every other cluster as `connected`.
    pub fn wait_connected(&self, limit: Duration) {
        let ids: Vec<String> = self.clusters.iter().map(|c| c.spec.id.clone()).collect();
        wait_until(
            "every gateway to be connected to every other cluster",
            limit,
            || {
                ids.iter().all(|id| {
                    let connections = self.broker.connections(id);
                    ids.iter().filter(|other| *other != id).all(|other| {
                        connections
                            .iter()
                            .any(|c| &c.remote_cluster == other && c.status == "connected")
                    })
                })
            },
        );
    }

    /// `strait show connections --broker dir:BROKER`: stdout, or the
    /// failure with its stderr.
    pub fn show_connections(&self) -> Result<String, String> {
        self.broker.show_connections(&self.options.strait_bin)
    }

    /// Keeps the whole set running after this process exits: namespaces
    /// stay, processes are no longer ours to stop. The journal (which
    /// must be configured) names all of it for [`teardown_persisted`].
    pub fn persist(mut self) -> PersistedSet {
        let journal = self
            .options
            .journal
            .clone()
            .expect("persist needs Options::journal");
        assert!(self._scratch.is_none(), "persist needs Options::root");
        let mut namespaces = Vec::new();
        let mut pids = Vec::new();
        for cluster in std::mem::take(&mut self.clusters) {
            let Cluster { nodes, lan, .. } = cluster;
            for node in nodes {
                let Node {
                    agent, pods, ns, ..
                } = node;
                if let Some(mut agent) = agent {
                    pids.push(agent.pid());
                    agent.child.take();
                }
                for pod in pods {
                    let Pod { echo, ns, .. } = pod;
                    if let Some(mut echo) = echo {
                        pids.push(echo.pid());
                        echo.child.take();
                    }
                    namespaces.push(leak(ns));
                }
                namespaces.push(leak(ns));
            }
            namespaces.push(leak(lan));
        }
        if let Some(wan) = self.wan.take() {
            namespaces.push(leak(wan));
        }
        self.journal.append("complete");
        PersistedSet {
            journal,
            namespaces,
            pids,
        }
    }
}

impl Drop for ClusterSet {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // The scratch directory goes with the set: say what the agents said.
        for cluster in &self.clusters {
            for node in &cluster.nodes {
                let log = node.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "---- agent {}/{} ({}), last {} lines:\n{}",
                    node.cluster_id,
                    node.name,
                    node.log_path.display(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}

fn leak(ns: Netns) -> String {
    let name = ns.name().to_string();
    std::mem::forget(ns);
    name
}

/// What [`ClusterSet::persist`] left running.
#[derive(Debug, Clone)]
pub struct PersistedSet {
    pub journal: PathBuf,
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
}

/// One cluster of a set.
pub struct Cluster {
    pub nodes: Vec<Node>,
    lan: Netns,
    pub spec: ClusterSpec,
}

impl Cluster {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The LAN namespace (its bridge `br0` joins the nodes).
    pub fn lan(&self) -> &Netns {
        &self.lan
    }

    /// The first gateway-capable node.
    pub fn gateway(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.gateway)
            .unwrap_or_else(|| panic!("cluster {} has no gateway node", self.spec.id))
    }

    pub fn gateway_mut(&mut self) -> &mut Node {
        let id = self.spec.id.clone();
        self.nodes
            .iter_mut()
            .find(|n| n.gateway)
            .unwrap_or_else(|| panic!("cluster {id} has no gateway node"))
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("cluster {} has no node {name}", self.spec.id))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        let id = self.spec.id.clone();
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("cluster {id} has no node {name}"))
    }

    /// Every pod of the cluster, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// The `n`-th pod of [`Cluster::pods`].
    pub fn pod(&self, n: usize) -> &Pod {
        self.pods()
            .nth(n)
            .unwrap_or_else(|| panic!("cluster {} has no pod {n}", self.spec.id))
    }
}

/// A node: its namespace, addresses, files and agent.
pub struct Node {
    agent: Option<Process>,
    pub pods: Vec<Pod>,
    pub ns: Netns,
    pub cluster_id: String,
    pub name: String,
    /// Its position in the cluster (`i`).
    pub index: usize,
    pub gateway: bool,
    /// On `lan0`; the agent's `node.ip` and metrics address.
    pub lan_ip: Ipv4Addr,
    /// On `wan0` (gateway-capable nodes): the agent's `node.public_ip`.
    pub wan_ip: Option<Ipv4Addr>,
    /// `10.k.(i+1).0/24`.
    pub pod_subnet: String,
    /// `10.k.(i+1).1`, on every pod veth: the pods' default gateway.
    pub pod_gateway: Ipv4Addr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub key_file: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    launch: Launch,
}

impl Node {
    pub fn exec(&self, args: &[&str]) -> Output {
        self.ns.exec(args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.ns.ok(args)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}:{METRICS_PORT}{path}", self.lan_ip)
    }

    /// The command that scrapes this node's metrics, for people to copy.
    pub fn metrics_command(&self) -> String {
        format!(
            "ip netns exec {} curl -s {}",
            self.ns.name(),
            self.metrics_url("/metrics")
        )
    }

    /// Starts the agent (its output appended to the node's log).
    pub fn start_agent(&mut self) {
        assert!(
            self.agent.is_none(),
            "the agent of {}/{} runs already",
            self.cluster_id,
            self.name
        );
        let bin = self.launch.strait_bin.to_string_lossy().into_owned();
        let config = self.config_path.to_string_lossy().into_owned();
        let mut args = vec![bin.as_str(), "agent", "--config", &config];
        if self.launch.log_json {
            args.extend(["--log-format", "json"]);
        }
        let mut env = vec![
            ("RUST_LOG", self.launch.rust_log.as_str()),
            ("NO_COLOR", "1"),
        ];
        env.extend(
            self.launch
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let process = spawn(&self.ns, &args, &env, &self.log_path, self.launch.detach);
        self.launch.journal.process(
            &process,
            &format!("agent {}/{}", self.cluster_id, self.name),
        );
        self.agent = Some(process);
    }

    /// Environment variables the agent gets from its next start on, as a
    /// DaemonSet's `env` gives them (`NODE_NAME`, say).
    pub fn set_agent_env(&mut self, env: Vec<(String, String)>) {
        self.launch.env = env;
    }

    /// SIGTERM, up to five seconds, then SIGKILL. Returns whether it
    /// exited by itself with success, and the log.
    pub fn stop_agent(&mut self) -> (bool, String) {
        match self.agent.take() {
            Some(mut agent) => agent.terminate(),
            None => (true, self.log()),
        }
    }

    /// Rewrites `node.gateway` in the agent's config: whether this
    /// (gateway-capable) node runs the gateway role the next time its
    /// agent starts. The node keeps its WAN link either way.
    pub fn set_gateway_role(&self, on: bool) {
        let text = std::fs::read_to_string(&self.config_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.config_path.display()));
        let mut found = false;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                if line.starts_with("  gateway: ") {
                    found = true;
                    format!("  gateway: {on}")
                } else {
                    line.to_string()
                }
            })
            .collect();
        assert!(found, "no node.gateway in {}", self.config_path.display());
        std::fs::write(&self.config_path, lines.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.config_path.display()));
    }

    /// Stops the agent and starts it again (not waiting for readiness).
    pub fn restart_agent(&mut self) -> (bool, String) {
        let stopped = self.stop_agent();
        self.start_agent();
        stopped
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|a| a.pid())
    }

    /// Whether the agent was started and still runs.
    pub fn agent_running(&mut self) -> bool {
        match self.agent.as_mut() {
            Some(agent) => !agent.exited(),
            None => false,
        }
    }

    /// `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.curl("/readyz").is_some()
    }

    /// Polls `/readyz`; panics with the log if the agent exits or the
    /// limit passes.
    pub fn wait_ready(&mut self, limit: Duration) {
        let what = format!("the agent of {}/{} to be ready", self.cluster_id, self.name);
        let deadline = Instant::now() + limit;
        loop {
            if !self.agent_running() {
                panic!("{what}: the agent is not running; its log:\n{}", self.log());
            }
            if self.ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` on the metrics address from inside the node.
    pub fn curl(&self, path: &str) -> Option<String> {
        let out = self
            .ns
            .exec(&["curl", "-sf", "--max-time", "2", &self.metrics_url(path)]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `/metrics` text (empty when it does not answer).
    pub fn metrics(&self) -> String {
        self.curl("/metrics").unwrap_or_default()
    }

    /// `ip route show table all` in the node.
    pub fn routes(&self) -> String {
        self.ns.ok(&["ip", "route", "show", "table", "all"])
    }

    /// Routes (any table) whose destination lies inside `cidr`.
    pub fn routes_into(&self, cidr: &str) -> Vec<String> {
        self.routes()
            .lines()
            .filter(|line| route_destination(line).is_some_and(|d| cidr_contains(cidr, &d)))
            .map(str::to_string)
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The WireGuard peers (base64 public keys) of the agent's device, asked
    /// over the UAPI socket(s) found in its state dir; `None` when there
    /// is no socket there.
    pub fn wg_peers(&self) -> Option<Vec<String>> {
        let socket = find_sockets(&self.state_dir, 3).into_iter().next()?;
        let mut stream = UnixStream::connect(&socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"get=1\n\n").ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        // The reply ends with an empty line.
        while !reply.ends_with(b"\n\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        let reply = String::from_utf8_lossy(&reply);
        Some(
            reply
                .lines()
                .filter_map(|l| l.strip_prefix("public_key="))
                .filter_map(hex_to_base64)
                .collect(),
        )
    }
}

/// A pod: a namespace with `eth0` to its node.
pub struct Pod {
    echo: Option<Process>,
    pub ns: Netns,
    /// `<node>-p<j>`.
    pub name: String,
    pub cluster_id: String,
    pub node: String,
    pub ip: Ipv4Addr,
    echo_bin: Option<PathBuf>,
}

impl Pod {
    /// What its echo server says first: `<cluster>/<pod>`.
    pub fn tag(&self) -> String {
        format!("{}/{}", self.cluster_id, self.name)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.ns.exec(args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.ns.ok(args)
    }

    /// Three echoes to `to`, all back within ten seconds.
    pub fn ping(&self, to: &Pod) -> bool {
        self.ns.ping_all(&to.ip.to_string(), 3, 10)
    }

    /// One echo to `ip` back within `secs` seconds.
    pub fn ping_once(&self, ip: Ipv4Addr, secs: u32) -> bool {
        self.ns.ping_all(&ip.to_string(), 1, secs)
    }

    /// Sends `bytes` bytes to `to`'s echo server and checks the answer
    /// byte for byte (and that `to` answered). Ok: the client's report.
    pub fn tcp_request(&self, to: &Pod, bytes: usize) -> Result<String, String> {
        self.tcp_request_with(to, bytes, &[])
    }

    /// [`Pod::tcp_request`] with `tcp-echo request` flags after the tag
    /// (`--chunk N`, `--rate BYTES_PER_SEC`, `--timeout SECS`).
    pub fn tcp_request_with(
        &self,
        to: &Pod,
        bytes: usize,
        flags: &[&str],
    ) -> Result<String, String> {
        self.tcp_request_at(to, to.ip, bytes, flags)
    }

    /// [`Pod::tcp_request_with`] to `to`'s echo server at the address
    /// `at` (a global ingress IP, say).
    pub fn tcp_request_at(
        &self,
        to: &Pod,
        at: Ipv4Addr,
        bytes: usize,
        flags: &[&str],
    ) -> Result<String, String> {
        let args = self.tcp_request_args_at(to, at, bytes, flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.ns.exec(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_string())
        } else {
            Err(text.trim().to_string())
        }
    }

    /// The `tcp-echo request` command line (to run elsewhere, or in the
    /// background with [`Netns::spawn`]).
    pub fn tcp_request_args(&self, to: &Pod, bytes: usize, flags: &[&str]) -> Vec<String> {
        self.tcp_request_args_at(to, to.ip, bytes, flags)
    }

    /// [`Pod::tcp_request_args`] to the address `at`.
    pub fn tcp_request_args_at(
        &self,
        to: &Pod,
        at: Ipv4Addr,
        bytes: usize,
        flags: &[&str],
    ) -> Vec<String> {
        let bin = self
            .echo_bin
            .as_ref()
            .expect("tcp_request needs Options::echo_bin");
        let mut args = vec![
            bin.to_string_lossy().into_owned(),
            "request".into(),
            format!("{at}:{ECHO_PORT}"),
            bytes.to_string(),
            to.tag(),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        args
    }

    /// Starts `ping -D` to `to`, `count` echoes 10 ms apart, output to
    /// `log`. No deadline (ping then stops on the first network error);
    /// the count bounds it, and it is killed on drop.
    pub fn start_ping(&self, to: Ipv4Addr, count: u32, log: &Path) -> PingRun {
        let process = self.ns.spawn(
            &[
                "ping",
                "-D",
                "-n",
                "-i",
                "0.01",
                "-c",
                &count.to_string(),
                &to.to_string(),
            ],
            &[],
            log,
        );
        PingRun {
            process,
            target: to,
        }
    }
}

/// A `ping -D` running in the background.
pub struct PingRun {
    process: Process,
    pub target: Ipv4Addr,
}

/// One echo reply: when it arrived (Unix time) and its sequence number.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub at: f64,
    pub seq: u32,
}

impl PingRun {
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The replies so far.
    pub fn replies(&self) -> Vec<Reply> {
        let from = format!("bytes from {}:", self.target);
        self.log()
            .lines()
            .filter(|l| l.contains(&from))
            .filter_map(|l| {
                let at = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
                let seq = l
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("icmp_seq="))?
                    .parse()
                    .ok()?;
                Some(Reply { at, seq })
            })
            .collect()
    }

    /// When the first reply arrived.
    pub fn first_reply(&self) -> Option<SystemTime> {
        self.replies()
            .first()
            .map(|r| UNIX_EPOCH + Duration::from_secs_f64(r.at))
    }

    /// The longest time between two consecutive replies.
    pub fn longest_gap(&self) -> Duration {
        self.replies()
            .windows(2)
            .map(|w| Duration::from_secs_f64((w[1].at - w[0].at).max(0.0)))
            .max()
            .unwrap_or_default()
    }

    pub fn finished(&mut self) -> bool {
        self.process.exited()
    }

    /// SIGINT (ping then prints its summary) and up to five seconds for
    /// it to exit.
    pub fn interrupt(&mut self) {
        if !self.process.exited() {
            // SAFETY: kill takes no pointers; the pid is our child's.
            unsafe { libc::kill(self.process.pid() as i32, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.process.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// (transmitted, received) from ping's summary, once it exited.
    pub fn summary(&self) -> Option<(u32, u32)> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("packets transmitted"))?;
        let number_before = |word: &str| -> Option<u32> {
            let at = line.find(word)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        Some((
            number_before(" packets transmitted")?,
            number_before(" received")?,
        ))
    }
}

/// A process in `ns` with its output appended to `log`; with `detach`
/// in a process group of its own.
fn spawn(ns: &Netns, args: &[&str], env: &[(&str, &str)], log: &Path, detach: bool) -> Process {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
    let err = out.try_clone().expect("cloning log handle");
    let mut command = ns.command(args[0]);
    command
        .args(&args[1..])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if detach {
        command.process_group(0);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {args:?} in {}: {e}", ns.name()));
    Process {
        child: Some(child),
        log: log.to_path_buf(),
    }
}

/// A node's agent configuration (the agent's YAML contract).
fn agent_config(spec: &ClusterSpec, node: &Node, broker: &Broker, options: &Options) -> String {
    let mut text = format!(
        "# generated by strait-netns-tests for {cluster}/{node}\n\
         cluster_id: {cluster}\n\
         node:\n  name: {node}\n  ip: {ip}\n  gateway: {gateway}\n",
        cluster = spec.id,
        node = node.name,
        ip = node.lan_ip,
        gateway = node.gateway,
    );
    if let Some(wan) = node.wan_ip {
        text.push_str(&format!("  public_ip: {wan}\n"));
    }
    text.push_str(&format!(
        "cluster:\n  pod_cidrs: [{pods}]\n  service_cidrs: [{services}]\n\
         broker: {broker:?}\n\
         cable:\n  udp_port: {port}\n  psk: {psk:?}\n  private_key_file: {key:?}\n\
         health:\n  interval_ms: {interval}\n  max_lost: {lost}\n\
         metrics_address: {ip}:{METRICS_PORT}\n\
         state_dir: {state:?}\n",
        pods = spec.pod_cidr,
        services = spec.service_cidr,
        broker = broker.location(),
        port = options.udp_port,
        psk = options.psk,
        key = node.key_file.to_string_lossy(),
        interval = options.health_interval_ms,
        lost = options.max_lost,
        ip = node.lan_ip,
        state = node.state_dir.to_string_lossy(),
    ));
    if let Some(extra) = &options.globalnet {
        text.push_str(&format!(
            "globalnet:\n  enabled: true\n  exports_dir: {:?}\n",
            crate::globalnet::exports_dir(node).to_string_lossy()
        ));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            text.push_str(&format!("  {}\n", line.trim()));
        }
    }
    text.push_str(&options.extra_config);
    text
}

/// The directory broker as files: what the agents published, and ways to
/// put files there behind their backs.
#[derive(Debug, Clone)]
pub struct Broker {
    pub path: PathBuf,
}

/// One entry of a Gateway's `status.connections`.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The Gateway object's file.
    pub gateway_file: PathBuf,
    pub remote_cluster: String,
    pub status: String,
    pub message: String,
    pub using_ip: String,
    pub raw: Value,
}

impl Broker {
    pub fn new(path: PathBuf) -> Broker {
        Broker { path }
    }

    /// `dir:PATH`, as agents are configured with.
    pub fn location(&self) -> String {
        format!("dir:{}", self.path.display())
    }

    /// The files under `kind` (`clusters`, `endpoints`, `gateways`),
    /// sorted; dot files (an atomic write's temp file) left out.
    pub fn files(&self, kind: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path.join(kind))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// A file parsed as YAML (JSON is YAML too); `None` if unreadable.
    pub fn read(path: &Path) -> Option<Value> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_yaml::from_str(&text).ok()
    }

    /// Every parsable object of a kind, with its file.
    pub fn objects(&self, kind: &str) -> Vec<(PathBuf, Value)> {
        self.files(kind)
            .into_iter()
            .filter_map(|p| Broker::read(&p).map(|v| (p, v)))
            .collect()
    }

    /// The Endpoint files whose `spec.cluster_id` is `cluster_id`.
    pub fn endpoint_files(&self, cluster_id: &str) -> Vec<PathBuf> {
        self.objects("endpoints")
            .into_iter()
            .filter(|(_, v)| str_at(v, &["spec", "cluster_id"]) == Some(cluster_id))
            .map(|(p, _)| p)
            .collect()
    }

    /// A cluster's (first) Endpoint object.
    pub fn endpoint(&self, cluster_id: &str) -> Option<Value> {
        let file = self.endpoint_files(cluster_id).into_iter().next()?;
        Broker::read(&file)
    }

    /// Removes a cluster's Endpoint files; returns how many.
    pub fn remove_endpoints(&self, cluster_id: &str) -> usize {
        let files = self.endpoint_files(cluster_id);
        for file in &files {
            std::fs::remove_file(file)
                .unwrap_or_else(|e| panic!("removing {}: {e}", file.display()));
        }
        files.len()
    }

    /// Writes `text` to `rel` (e.g. `endpoints/x.yaml`) atomically.
    pub fn write_raw(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path.join(rel);
        let dir = path.parent().expect("a file under the broker");
        std::fs::create_dir_all(dir).expect("creating a broker directory");
        let name = path.file_name().unwrap().to_string_lossy();
        let temp = dir.join(format!(".{name}.{}", unique_id()));
        std::fs::write(&temp, text).expect("writing a broker file");
        std::fs::rename(&temp, &path).expect("renaming a broker file");
        path
    }

    /// The Gateway objects of a cluster: `status.localEndpoint.cluster_id`,
    /// or else a file name `<cluster_id>-...`.
    pub fn gateways(&self, cluster_id: &str) -> Vec<(PathBuf, Value)> {
        let prefix = format!("{cluster_id}-");
        self.objects("gateways")
            .into_iter()
            .filter(
                |(p, v)| match str_at(v, &["status", "localEndpoint", "cluster_id"]) {
                    Some(id) => id == cluster_id,
                    None => p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix)),
                },
            )
            .collect()
    }

    /// The connections a cluster's gateway(s) report (passive ones left out).
    pub fn connections(&self, cluster_id: &str) -> Vec<Connection> {
        let mut found = Vec::new();
        for (file, gateway) in self.gateways(cluster_id) {
            if str_at(&gateway, &["status", "haStatus"]) == Some("passive") {
                continue;
            }
            let Some(list) = at(&gateway, &["status", "connections"]).and_then(|c| c.as_sequence())
            else {
                continue;
            };
            for c in list {
                found.push(Connection {
                    gateway_file: file.clone(),
                    remote_cluster: str_at(c, &["endpoint", "cluster_id"])
                        .unwrap_or_default()
                        .to_string(),
                    status: str_at(c, &["status"]).unwrap_or_default().to_string(),
                    message: str_at(c, &["statusMessage"])
                        .unwrap_or_default()
                        .to_string(),
                    using_ip: str_at(c, &["usingIP"]).unwrap_or_default().to_string(),
                    raw: c.clone(),
                });
            }
        }
        found
    }

    /// `strait show connections --broker dir:PATH`.
    pub fn show_connections(&self, strait_bin: &Path) -> Result<String, String> {
        let out = std::process::Command::new(strait_bin)
            .args(["show", "connections", "--broker", &self.location()])
            .stdin(Stdio::null())
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| format!("starting {}: {e}", strait_bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "exit {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// The value at a path of mapping keys.
pub fn at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// The string at a path of mapping keys.
pub fn str_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    at(value, path)?.as_str()
}

/// One Prometheus sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with \" \\ \n escapes.
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &body[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a.b.c.d/len` (IPv4 only).
fn parse_v4_cidr(cidr: &str) -> (Ipv4Addr, u8) {
    let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    (
        addr.parse()
            .unwrap_or_else(|_| panic!("{cidr} is not an IPv4 CIDR")),
        len.parse()
            .unwrap_or_else(|_| panic!("{cidr} is not an IPv4 CIDR")),
    )
}

fn add_to_v4(addr: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) + n)
}

/// Whether `inner` (an address or CIDR) lies inside `cidr` (IPv4).
pub fn cidr_contains(cidr: &str, inner: &str) -> bool {
    let (Some((net, len)), Some((addr, inner_len))) = (try_v4_cidr(cidr), try_v4_cidr(inner))
    else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    inner_len >= len && (u32::from(addr) & mask) == (u32::from(net) & mask)
}

fn try_v4_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((addr.parse().ok()?, len))
}

/// The destination of an `ip route` line (after a route type, if any).
fn route_destination(line: &str) -> Option<String> {
    let mut fields = line.split_whitespace();
    let first = fields.next()?;
    let dest = match first {
        "unicast" | "local" | "broadcast" | "multicast" | "blackhole" | "unreachable"
        | "prohibit" | "throw" | "nat" | "anycast" => fields.next()?,
        other => other,
    };
    Some(dest.to_string())
}

fn find_sockets(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_socket() {
            found.push(entry.path());
        } else if kind.is_dir() && depth > 0 {
            found.extend(find_sockets(&entry.path(), depth - 1));
        }
    }
    found.sort();
    found
}

/// Standard base64 of a hex string (a UAPI key), `None` if not hex.
fn hex_to_base64(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some(base64(&bytes?))
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A live process's start time (clock ticks since boot, /proc/PID/stat
/// field 22): with the pid, it names one process even after pids are
/// reused. `None` for no such process or a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// What a journal names that is still there.
#[derive(Debug, Default, Clone)]
pub struct JournalState {
    /// (pid, label) still running as the same process.
    pub processes: Vec<(u32, String)>,
    pub namespaces: Vec<String>,
    /// Whether `persist` completed.
    pub complete: bool,
}

/// Reads a journal and checks what of it still exists.
pub fn journal_state(journal: &Path) -> JournalState {
    let mut state = JournalState::default();
    let Ok(text) = std::fs::read_to_string(journal) else {
        return state;
    };
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        match fields.next() {
            Some("netns") => {
                if let Some(name) = fields.next() {
                    if Path::new("/run/netns").join(name).exists() {
                        state.namespaces.push(name.to_string());
                    }
                }
            }
            Some("pid") => {
                let pid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
                let start: Option<u64> = fields.next().and_then(|s| s.parse().ok());
                let label = fields.next().unwrap_or("").to_string();
                if let (Some(pid), Some(start)) = (pid, start) {
                    if process_start_time(pid) == Some(start) {
                        state.processes.push((pid, label));
                    }
                }
            }
            Some("complete") => state.complete = true,
            _ => {}
        }
    }
    state
}

/// What [`teardown_persisted`] did.
#[derive(Debug, Default, Clone)]
pub struct Teardown {
    pub stopped: Vec<(u32, String)>,
    /// Stopped only by SIGKILL.
    pub killed: Vec<u32>,
    pub namespaces: Vec<String>,
    /// Processes not in the journal still inside a deleted namespace: left
    /// alone (the namespace lingers until they exit).
    pub strangers: Vec<(String, u32)>,
}

/// Stops the processes a journal names (SIGTERM, up to five seconds,
/// SIGKILL; only a pid whose start time still matches), then deletes its
/// namespaces and the journal file.
pub fn teardown_persisted(journal: &Path) -> Teardown {
    let state = journal_state(journal);
    let mut report = Teardown::default();
    for (pid, label) in state.processes.iter().rev() {
        // SAFETY: kill takes no pointers; the pid's start time matched.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        report.stopped.push((*pid, label.clone()));
    }
    let still = || -> Vec<u32> {
        journal_state(journal)
            .processes
            .iter()
            .map(|(p, _)| *p)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !still().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in still() {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        report.killed.push(pid);
    }
    for name in state.namespaces.iter().rev() {
        let pids = run("ip", &["netns", "pids", name]);
        for pid in String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
        {
            report.strangers.push((name.clone(), pid));
        }
        let _ = run("ip", &["netns", "del", name]);
        report.namespaces.push(name.clone());
    }
    let _ = std::fs::remove_file(journal);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples() {
        let text = "# HELP x y\n\
            submariner_connections{cable_driver=\"wireguard\",remote_cluster=\"b\",status=\"connected\"} 1\n\
            submariner_connection_latency_seconds{remote_cluster=\"b\",note=\"a \\\"q\\\"\"} 0.000321\n\
            submariner_gateway_sync_iterations 42\n";
        let samples = parse_metrics(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].label("status"), Some("connected"));
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[1].label("note"), Some("a \"q\""));
        assert_eq!(samples[1].value, 0.000321);
        assert_eq!(samples[2].name, "submariner_gateway_sync_iterations");
        assert!(samples[2].labels.is_empty());
    }

    #[test]
    fn cidrs_and_routes() {
        assert!(cidr_contains("10.3.0.0/16", "10.3.0.0/16"));
        assert!(cidr_contains("10.3.0.0/16", "10.3.7.1"));
        assert!(!cidr_contains("10.3.0.0/16", "10.0.0.0/8"));
        assert!(!cidr_contains("10.3.0.0/16", "10.4.0.1"));
        assert_eq!(
            route_destination("local 10.3.0.1 dev strait-wg table local").as_deref(),
            Some("10.3.0.1")
        );
        assert_eq!(
            route_destination("10.3.0.0/16 dev strait-wg proto 250").as_deref(),
            Some("10.3.0.0/16")
        );
    }

    #[test]
    fn base64_of_keys() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(hex_to_base64("666f6f").as_deref(), Some("Zm9v"));
    }

    #[test]
    fn default_addressing() {
        let spec = ClusterSpec::single_gateway("a", 1, 1);
        assert_eq!(spec.pod_cidr, "10.1.0.0/16");
        assert_eq!(spec.service_cidr, "10.101.0.0/16");
        let (base, len) = parse_v4_cidr(&spec.pod_cidr);
        assert_eq!(len, 16);
        assert_eq!(add_to_v4(base, 256).to_string(), "10.1.1.0");
    }
}
