//! End to end in Kubernetes mode: `strait deploy-broker` and `strait join`
//! run as a user runs them, then every node's agent runs with exactly what
//! join installed in its cluster, read back through the cluster's API: the
//! DaemonSet's command, environment and mounts, the ConfigMap's agent
//! configuration, the Secret's broker kubeconfig and PSK, and for the local
//! API a token of the DaemonSet's ServiceAccount (only what
//! `deploy/rbac.yaml` grants it). No admin credential reaches an agent.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_yaml::Value;
use strait_netns_tests::cluster::{ClusterSpec, Node, Options};
use strait_netns_tests::kube::{block_on_in_netns, KubeSet, BROKER_NAMESPACE, STRAIT_NAMESPACE};
use strait_netns_tests::Netns;

/// The agent's state directory when its configuration names none (a
/// fixed path in the agent, mounted by the DaemonSet from the host).
const DEFAULT_STATE_DIR: &str = "/var/run/wireguard";
/// Every wait's bound.
const LIMIT: Duration = Duration::from_secs(60);
/// How long one `strait` command may take.
const COMMAND_SECONDS: &str = "120";

/// Runs `strait ARGS` inside `ns`; it must succeed within
/// [`COMMAND_SECONDS`]. Returns stdout.
fn strait_in(kube: &KubeSet, ns: &Netns, args: &[&str]) -> String {
    let bin = kube.set.options().strait_bin.clone();
    let out = ns
        .command("timeout")
        .arg(COMMAND_SECONDS)
        .arg(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running strait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "strait {args:?} in {} failed ({}):\n{stdout}\n{}",
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Object `name` of kind `K` in Strait's namespace; it must exist.
async fn get<K>(client: &kube::Client, name: &str) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), STRAIT_NAMESPACE)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{} {name}: {e}", K::kind(&Default::default())))
}

/// What `strait join` installed in a cluster for its agents, as a kubelet
/// would find it: the DaemonSet's pod, the ConfigMaps and Secrets its
/// volumes name, and a token of its ServiceAccount.
struct Installed {
    pod: PodSpec,
    config_maps: BTreeMap<String, ConfigMap>,
    secrets: BTreeMap<String, Secret>,
    token: String,
}

impl Installed {
    fn read(kube: &KubeSet, id: &str) -> Installed {
        kube.local(id, |client| async move {
            let daemon_set: DaemonSet = get(&client, "strait-agent").await;
            let pod = daemon_set
                .spec
                .and_then(|s| s.template.spec)
                .expect("the DaemonSet's pod");
            let mut config_maps = BTreeMap::new();
            let mut secrets = BTreeMap::new();
            for volume in pod.volumes.iter().flatten() {
                if let Some(name) = volume.config_map.as_ref().map(|c| c.name.clone()) {
                    config_maps.insert(name.clone(), get(&client, &name).await);
                }
                if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
                    secrets.insert(name.clone(), get(&client, &name).await);
                }
            }
            let account = pod
                .service_account_name
                .clone()
                .expect("the DaemonSet names a ServiceAccount");
            let token = Api::<ServiceAccount>::namespaced(client, STRAIT_NAMESPACE)
                .create_token_request(&account, &PostParams::default(), &TokenRequest::default())
                .await
                .unwrap_or_else(|e| panic!("a token of ServiceAccount {account}: {e}"))
                .status
                .expect("a TokenRequest status")
                .token;
            Installed {
                pod,
                config_maps,
                secrets,
                token,
            }
        })
    }

    fn container(&self) -> &Container {
        match self.pod.containers.as_slice() {
            [one] => one,
            other => panic!("the DaemonSet has {} containers, not one", other.len()),
        }
    }
}

/// One node's view of the DaemonSet's pod: each mount path and the
/// directory of the simulated node that backs it.
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    /// Fills a directory per volume under `node`'s `root/` as the kubelet
    /// would: ConfigMap and Secret keys as files (the Secret's mode), a
    /// hostPath directory of this node. The simulated nodes share one
    /// filesystem, so each node's host paths live under its own root.
    fn make(node: &Node, installed: &Installed) -> Mounts {
        let root = node.dir.join("root");
        let under_root = |path: &str| root.join(path.trim_start_matches('/'));
        let mut mounts = Vec::new();
        for mount in installed.container().volume_mounts.iter().flatten() {
            assert!(mount.sub_path.is_none(), "a subPath mount: {mount:?}");
            let volume = installed
                .pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .unwrap_or_else(|| panic!("no volume {} in the DaemonSet", mount.name));
            let files: Vec<(String, Vec<u8>)> = if let Some(source) = &volume.config_map {
                assert!(source.items.is_none(), "items of {}", mount.name);
                installed.config_maps[&source.name]
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect()
            } else if let Some(source) = &volume.secret {
                assert!(source.items.is_none(), "items of {}", mount.name);
                let name = source.secret_name.clone().unwrap_or_default();
                installed.secrets[&name]
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect()
            } else if let Some(host) = &volume.host_path {
                if host.type_.as_deref() == Some("CharDevice") {
                    // /dev/net/tun: the node's device, used where it is.
                    continue;
                }
                let dir = under_root(&host.path);
                std::fs::create_dir_all(&dir).expect("a hostPath directory");
                mounts.push((mount.mount_path.clone(), dir));
                continue;
            } else {
                panic!(
                    "volume {} is of a kind this harness does not mount",
                    mount.name
                );
            };
            let dir = under_root(&mount.mount_path);
            std::fs::create_dir_all(&dir).expect("a volume directory");
            let mode = volume.secret.as_ref().and_then(|s| s.default_mode);
            for (key, bytes) in files {
                let file = dir.join(&key);
                std::fs::write(&file, bytes).expect("writing a volume file");
                if let Some(mode) = mode {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode as u32))
                        .expect("setting a Secret file's mode");
                }
            }
            mounts.push((mount.mount_path.clone(), dir));
        }
        Mounts(mounts)
    }

    /// Where `path` of the container is on the simulated node; panics when
    /// no volume holds it (the agent would not find it in its pod either).
    fn resolve(&self, path: &str) -> String {
        self.0
            .iter()
            .find_map(|(at, dir)| {
                let rest = path.strip_prefix(at.as_str())?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| format!("{}{rest}", dir.display()))
            })
            .unwrap_or_else(|| panic!("{path} is on no volume of the DaemonSet"))
    }

    /// Every absolute path in the configuration (bare, or behind a
    /// broker's `kube:`/`dir:`) resolved through the mounts.
    fn rewrite_paths(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                let (scheme, path) = match s.split_once(':') {
                    Some((scheme @ ("kube" | "dir"), path)) => (format!("{scheme}:"), path),
                    _ => (String::new(), s.as_str()),
                };
                if path.starts_with('/') {
                    *s = format!("{scheme}{}", self.resolve(path));
                }
            }
            Value::Mapping(map) => map.values_mut().for_each(|v| self.rewrite_paths(v)),
            Value::Sequence(items) => items.iter_mut().for_each(|v| self.rewrite_paths(v)),
            _ => {}
        }
    }
}

/// Readies `node`'s agent as the DaemonSet's pod on it would run: its
/// volumes, its configuration, its environment. Returns the configuration
/// the agent gets.
fn install_agent(kube: &mut KubeSet, id: &str, node_name: &str, installed: &Installed) -> Value {
    let container = installed.container();
    let args = container.args.clone().unwrap_or_default();
    assert!(container.command.is_none(), "{container:?}");
    // The harness runs `strait agent --config FILE`: the DaemonSet must too.
    let [agent, flag, config_path] = args.as_slice() else {
        panic!("the DaemonSet runs strait {args:?}");
    };
    assert_eq!((agent.as_str(), flag.as_str()), ("agent", "--config"));
    let node = kube.set.cluster(id).node(node_name);
    let mounts = Mounts::make(node, installed);
    let file = mounts.resolve(config_path);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{config_path} (the DaemonSet's --config) in the pod: {e}"));
    let mut config: Value = serde_yaml::from_str(&text).expect("agent.yaml is YAML");

    // The edits a DaemonSet's pod makes by itself, and no other:
    // 1. Paths: through the mounts (the Secret at /etc/strait/broker, the
    //    hostPath /var/lib/strait holding the private key).
    mounts.rewrite_paths(&mut config);
    // 2. The default state_dir is a fixed path the DaemonSet mounts from
    //    the host; the simulated nodes share one filesystem, so it is
    //    spelled out as this node's directory behind the mount.
    assert!(config.get("state_dir").is_none(), "{text}");
    config["state_dir"] = mounts.resolve(DEFAULT_STATE_DIR).into();
    // 3. The local API: in a pod, in-cluster configuration (the
    //    ServiceAccount's token); here a kubeconfig with such a token.
    let kubernetes = config
        .get_mut("kubernetes")
        .unwrap_or_else(|| panic!("no kubernetes section: {text}"));
    assert!(kubernetes.get("kubeconfig").is_none(), "{text}");
    let account = installed
        .pod
        .service_account_name
        .clone()
        .unwrap_or_default();
    let kubeconfig = node.dir.join("serviceaccount.kubeconfig");
    std::fs::write(
        &kubeconfig,
        kube.locals[id].token_kubeconfig(&account, &installed.token),
    )
    .expect("writing the ServiceAccount's kubeconfig");
    kubernetes["kubeconfig"] = kubeconfig.to_string_lossy().into_owned().into();
    std::fs::write(
        &node.config_path,
        serde_yaml::to_string(&config).expect("YAML"),
    )
    .expect("writing the agent's configuration");

    // The environment: literal values, and spec.nodeName (the downward
    // API) as this node's name.
    let env = container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let field = var
                .value_from
                .as_ref()
                .and_then(|from| from.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            let value = match (&var.value, field) {
                (Some(value), None) => value.clone(),
                (None, Some("spec.nodeName")) => node_name.to_string(),
                other => panic!("env {} from {other:?}: not simulated", var.name),
            };
            (var.name.clone(), value)
        })
        .collect();
    kube.set
        .cluster_mut(id)
        .node_mut(node_name)
        .set_agent_env(env);
    config
}

/// The user the API server sees behind a kubeconfig, asked from `ns`.
fn whoami(ns: &str, kubeconfig: PathBuf) -> String {
    block_on_in_netns(ns, move || async move {
        let file = kube::config::Kubeconfig::read_from(&kubeconfig).expect("a kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .expect("a configuration");
        let client = kube::Client::try_from(config).expect("a client");
        Api::<SelfSubjectReview>::all(client)
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .expect("a SelfSubjectReview")
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_default()
    })
}

/// Fails with the lines of the agents' logs that speak of a refusal by
/// RBAC or an admission policy, if there are any.
fn assert_not_refused(kube: &KubeSet) {
    let refused: Vec<String> = kube
        .set
        .clusters()
        .iter()
        .flat_map(|c| &c.nodes)
        .flat_map(|node| {
            node.log()
                .lines()
                // The API's refusal as kube's errors print it; a bare
                // "403" would also match timestamps and ports.
                .filter(|l| l.contains("code: 403") || l.to_lowercase().contains("forbidden"))
                .map(|l| format!("{}/{}: {l}", node.cluster_id, node.name))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the agents were refused:\n{}",
        refused.join("\n")
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Builds the clusters of `specs`, runs `strait deploy-broker FLAGS` and
/// `strait join` for each, then starts every node's agent with what join
/// installed and waits until each is ready. Returns each node's agent
/// configuration (`<cluster>/<node>`).
fn join_and_start(
    specs: &[ClusterSpec],
    options: Options,
    deploy_flags: &[&str],
) -> (KubeSet, BTreeMap<String, Value>) {
    let mut kube = KubeSet::build(specs, options);

    // The broker, from the WAN, where its API server is.
    let info = kube.set.root().join("broker-info.subm");
    let broker_admin = kube.broker.kubeconfig_path();
    let mut args = vec![
        "deploy-broker",
        "--kubeconfig",
        path(&broker_admin),
        "--output",
        path(&info),
    ];
    args.extend(deploy_flags);
    let out = strait_in(&kube, kube.set.wan(), &args);
    println!("DEPLOY-BROKER:\n{out}");

    // Each cluster joins from its gateway node: the one namespace that
    // reaches both its cluster's API server (LAN) and the broker's (WAN).
    let mut configs = BTreeMap::new();
    for spec in specs {
        let id = spec.id.as_str();
        let cluster_admin = kube.locals[id].kubeconfig_path();
        let gateway = kube.set.cluster(id).gateway();
        let out = strait_in(
            &kube,
            &gateway.ns,
            &[
                "join",
                path(&info),
                "--clusterid",
                id,
                "--kubeconfig",
                path(&cluster_admin),
            ],
        );
        println!("JOIN {id}:\n{out}");
        let installed = Installed::read(&kube, id);
        for node in &spec.nodes {
            let config = install_agent(&mut kube, id, &node.name, &installed);
            configs.insert(format!("{id}/{}", node.name), config);
        }
    }
    for (node, config) in &configs {
        println!(
            "AGENT CONFIG {node}:\n{}",
            serde_yaml::to_string(config).unwrap()
        );
    }
    for spec in specs {
        kube.set.start_cluster(&spec.id);
    }
    for spec in specs {
        kube.set.wait_cluster_ready(&spec.id);
    }
    (kube, configs)
}

#[test]
fn agents_run_with_exactly_what_join_installed() {
    let ids = ["east", "west"];
    let (kube, configs) = join_and_start(
        &[
            ClusterSpec::single_gateway("east", 1, 1),
            ClusterSpec::single_gateway("west", 2, 1),
        ],
        Options::new(),
        &[],
    );

    // The gateways connect, and pods reach each other both ways.
    kube.wait_active_connected("east", &["west"], LIMIT);
    kube.wait_active_connected("west", &["east"], LIMIT);
    let east_pod = kube.set.cluster("east").pod(0);
    let west_pod = kube.set.cluster("west").pod(0);
    assert!(east_pod.ping(west_pod), "east's pod cannot reach west's");
    assert!(west_pod.ping(east_pod), "west's pod cannot reach east's");

    for id in ids {
        let gateway = kube.set.cluster(id).gateway();
        let config = &configs[&format!("{id}/{}", gateway.name)];
        let broker = config["broker"].as_str().unwrap().to_string();
        let local = config["kubernetes"]["kubeconfig"].as_str().unwrap();
        // `strait show` with the agent's own credentials.
        let shown = strait_in(
            &kube,
            &gateway.ns,
            &[
                "show",
                "connections",
                "--broker",
                &broker,
                "--kubeconfig",
                local,
            ],
        );
        println!("SHOW CONNECTIONS {id}:\n{shown}");
        let remote = ids.iter().find(|r| **r != id).unwrap();
        assert!(
            shown.lines().any(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.starts_with(&[&gateway.name, id])
                    && fields.contains(remote)
                    && fields.contains(&"connected")
            }),
            "no connection of {id} to {remote} shown:\n{shown}"
        );
        // The agent's broker account is its cluster's own...
        let broker_file = PathBuf::from(broker.strip_prefix("kube:").unwrap());
        assert_eq!(
            whoami(gateway.ns.name(), broker_file),
            format!("system:serviceaccount:{BROKER_NAMESPACE}:strait-cluster-{id}")
        );
        // ...and its Endpoint is in the broker namespace, applied by the
        // agent (field manager `strait`), reaching the gateway at its
        // node's ExternalIP.
        let endpoints = kube.broker_endpoint_objects(id);
        let [endpoint] = endpoints.as_slice() else {
            panic!("{id} has {} endpoints in the broker", endpoints.len());
        };
        let managers: Vec<&str> = endpoint
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.as_deref())
            .collect();
        assert_eq!(managers, ["strait"], "{endpoint:?}");
        assert_eq!(endpoint.data["spec"]["hostname"], gateway.name.as_str());
        assert_eq!(
            endpoint.data["spec"]["public_ip"],
            gateway.wan_ip.unwrap().to_string().as_str()
        );
    }

    assert_not_refused(&kube);
}

#[test]
fn with_globalnet_agents_run_with_exactly_what_join_installed() {
    const PODS: &str = "10.1.0.0/16";
    const SERVICES: &str = "10.101.0.0/16";
    // Join gives east the first slice of 242.0.0.0/8, west the second.
    let (kube, _) = join_and_start(
        &[
            ClusterSpec::single_gateway("east", 1, 1).with_cidrs(PODS, SERVICES),
            ClusterSpec::single_gateway("west", 2, 1).with_cidrs(PODS, SERVICES),
        ],
        Options::new().with_echo(env!("CARGO_BIN_EXE_tcp-echo")),
        &["--globalnet"],
    );
    kube.check_globalnet_exports(LIMIT);
    kube.check_cluster_pool_and_headless_export(LIMIT);
    assert_not_refused(&kube);
}
