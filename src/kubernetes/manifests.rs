//! The objects `join` installs into a cluster: the files under `deploy/`
//! (what `kubectl apply -k deploy/` applies), embedded and patched for one
//! cluster, so that the two never drift; plus the agent's configuration
//! and its broker Secret, which only `join` can write.

use std::collections::BTreeMap;

use super::join::GlobalSlice;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ipnet::IpNet;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};

/// The namespace Strait is installed in unless `--namespace` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "strait";
/// The agent's ConfigMap, and its key.
pub const AGENT_CONFIG_MAP: &str = "strait-agent";
pub const AGENT_CONFIG_KEY: &str = "agent.yaml";
/// The broker access of the cluster, mounted at [`BROKER_DIR`].
pub const BROKER_SECRET: &str = "strait-broker";
pub const BROKER_KUBECONFIG_KEY: &str = "kubeconfig";
pub const BROKER_PSK_KEY: &str = "psk";
pub const BROKER_DIR: &str = "/etc/strait/broker";
pub const PRIVATE_KEY_FILE: &str = "/var/lib/strait/private.key";
/// The label the API server gives every namespace, its name: applied as
/// it is, so that applying a namespace again changes nothing.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `deploy/` as `join` applies it, in this order.
const FILES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../deploy/namespace.yaml"),
    ),
    ("rbac.yaml", include_str!("../../deploy/rbac.yaml")),
    (
        "configmap.yaml",
        include_str!("../../deploy/configmap.yaml"),
    ),
    (
        "daemonset.yaml",
        include_str!("../../deploy/daemonset.yaml"),
    ),
    ("service.yaml", include_str!("../../deploy/service.yaml")),
    (
        "servicemonitor.yaml",
        include_str!("../../deploy/servicemonitor.yaml"),
    ),
];

/// The objects of `deploy/` (the CRDs come from [`crate::broker::crd`]).
#[derive(Debug, Clone)]
pub struct Manifests {
    pub namespace: Namespace,
    pub service_account: ServiceAccount,
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub daemon_set: DaemonSet,
    pub service: Service,
    /// Prometheus operator's kind: no Rust type.
    pub service_monitor: DynamicObject,
}

/// Every document of the embedded files, by kind.
struct Documents(BTreeMap<String, Vec<(String, serde_yaml::Value)>>);

impl Documents {
    fn embedded() -> Documents {
        let mut by_kind: BTreeMap<String, Vec<(String, serde_yaml::Value)>> = BTreeMap::new();
        for (file, text) in FILES {
            for document in serde_yaml::Deserializer::from_str(text) {
                let value = serde_yaml::Value::deserialize(document)
                    .unwrap_or_else(|e| panic!("deploy/{file} is not YAML: {e}"));
                let kind = value["kind"]
                    .as_str()
                    .unwrap_or_else(|| panic!("deploy/{file} has a document without a kind"))
                    .to_string();
                by_kind
                    .entry(kind)
                    .or_default()
                    .push((file.to_string(), value));
            }
        }
        Documents(by_kind)
    }

    /// The one object of `kind`.
    fn one<K: DeserializeOwned>(&mut self, kind: &str) -> K {
        let mut found = self.0.remove(kind).unwrap_or_default();
        assert!(
            found.len() == 1,
            "deploy/ must hold exactly one {kind}, has {}",
            found.len()
        );
        let (file, value) = found.remove(0);
        serde_yaml::from_value(value).unwrap_or_else(|e| panic!("deploy/{file}: {kind}: {e}"))
    }
}

impl Manifests {
    /// The files as they are. They are part of the binary and a unit test
    /// reads them, so a broken file cannot ship: a panic here is a bug.
    pub fn embedded() -> Manifests {
        let mut docs = Documents::embedded();
        let manifests = Manifests {
            namespace: docs.one("Namespace"),
            service_account: docs.one("ServiceAccount"),
            cluster_role: docs.one("ClusterRole"),
            cluster_role_binding: docs.one("ClusterRoleBinding"),
            role: docs.one("Role"),
            role_binding: docs.one("RoleBinding"),
            config_map: docs.one("ConfigMap"),
            daemon_set: docs.one("DaemonSet"),
            service: docs.one("Service"),
            service_monitor: docs.one("ServiceMonitor"),
        };
        assert!(
            docs.0.is_empty(),
            "deploy/ holds kinds join does not apply: {:?}",
            docs.0.keys()
        );
        manifests
    }

    /// The files for one cluster: installed in `namespace`, running
    /// `image` (when given) with `agent_config`.
    pub fn for_cluster(namespace: &str, image: Option<&str>, agent_config: String) -> Manifests {
        let mut m = Manifests::embedded();
        m.namespace.metadata.name = Some(namespace.into());
        m.namespace
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(NAMESPACE_NAME_LABEL.into(), namespace.into());
        for meta in [
            &mut m.service_account.metadata,
            &mut m.role.metadata,
            &mut m.role_binding.metadata,
            &mut m.config_map.metadata,
            &mut m.daemon_set.metadata,
            &mut m.service.metadata,
            &mut m.service_monitor.metadata,
        ] {
            meta.namespace = Some(namespace.into());
        }
        let subjects = m
            .cluster_role_binding
            .subjects
            .iter_mut()
            .chain(m.role_binding.subjects.iter_mut())
            .flatten();
        for subject in subjects {
            in_namespace(subject, namespace);
        }
        m.config_map.data = Some(BTreeMap::from([(AGENT_CONFIG_KEY.into(), agent_config)]));
        if let Some(image) = image {
            let pod = m
                .daemon_set
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("deploy/daemonset.yaml has a pod spec");
            for container in &mut pod.containers {
                container.image = Some(image.into());
            }
        }
        m
    }
}

fn in_namespace(subject: &mut Subject, namespace: &str) {
    if subject.kind == "ServiceAccount" {
        subject.namespace = Some(namespace.into());
    }
}

#[derive(Serialize)]
struct AgentConfigFile<'a> {
    cluster_id: &'a str,
    broker: String,
    kubernetes: KubernetesSection<'a>,
    cluster: ClusterSection,
    cable: CableSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    globalnet: Option<GlobalnetSection>,
}

#[derive(Serialize)]
struct KubernetesSection<'a> {
    namespace: &'a str,
}

#[derive(Serialize)]
struct ClusterSection {
    pod_cidrs: Vec<String>,
    service_cidrs: Vec<String>,
}

#[derive(Serialize)]
struct GlobalnetSection {
    enabled: bool,
    cidr_range: String,
    cluster_size: u32,
    global_cidr: String,
}

#[derive(Serialize)]
struct CableSection {
    psk_file: String,
    private_key_file: &'static str,
}

/// The agent's `agent.yaml` in Kubernetes mode: the node comes from
/// `NODE_NAME` and its Node object, the broker from the mounted Secret.
pub fn agent_config(
    cluster_id: &str,
    namespace: &str,
    pod_cidrs: &[IpNet],
    service_cidrs: &[IpNet],
    global: Option<&GlobalSlice>,
) -> String {
    let file = AgentConfigFile {
        cluster_id,
        broker: format!("kube:{BROKER_DIR}/{BROKER_KUBECONFIG_KEY}"),
        kubernetes: KubernetesSection { namespace },
        cluster: ClusterSection {
            pod_cidrs: pod_cidrs.iter().map(ToString::to_string).collect(),
            service_cidrs: service_cidrs.iter().map(ToString::to_string).collect(),
        },
        cable: CableSection {
            psk_file: format!("{BROKER_DIR}/{BROKER_PSK_KEY}"),
            private_key_file: PRIVATE_KEY_FILE,
        },
        globalnet: global.map(|g| GlobalnetSection {
            enabled: true,
            cidr_range: g.settings.cidr_range.to_string(),
            cluster_size: g.settings.cluster_size,
            global_cidr: g.cidr.to_string(),
        }),
    };
    serde_yaml::to_string(&file).expect("the agent configuration serializes")
}

/// Where a joined cluster's agents reach the broker, as its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerKubeconfig<'a> {
    pub url: &'a str,
    /// PEM; empty for a publicly trusted certificate.
    pub ca_pem: &'a str,
    pub namespace: &'a str,
    pub user: &'a str,
    pub token: &'a str,
}

impl BrokerKubeconfig<'_> {
    pub fn to_yaml(&self) -> String {
        let mut cluster = serde_json::json!({ "server": self.url });
        if !self.ca_pem.is_empty() {
            cluster["certificate-authority-data"] = BASE64.encode(self.ca_pem).into();
        }
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "broker", "cluster": cluster }],
            "users": [{ "name": self.user, "user": { "token": self.token } }],
            "contexts": [{
                "name": "broker",
                "context": { "cluster": "broker", "user": self.user, "namespace": self.namespace },
            }],
            "current-context": "broker",
        });
        serde_yaml::to_string(&config).expect("a kubeconfig serializes")
    }

    /// The token of a kubeconfig `to_yaml` wrote, if it is for the same
    /// broker URL and namespace as `self` (whose token is ignored).
    pub fn token_in(&self, yaml: &str) -> Option<String> {
        let config: serde_json::Value = serde_yaml::from_str(yaml).ok()?;
        let same = config["clusters"][0]["cluster"]["server"] == self.url
            && config["contexts"][0]["context"]["namespace"] == self.namespace
            && config["users"][0]["name"] == self.user;
        same.then(|| {
            config["users"][0]["user"]["token"]
                .as_str()
                .map(String::from)
        })
        .flatten()
    }
}

/// The Secret the agents mount at [`BROKER_DIR`].
pub fn broker_secret(namespace: &str, kubeconfig: String, psk: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(BROKER_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "strait".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                BROKER_KUBECONFIG_KEY.into(),
                ByteString(kubeconfig.into_bytes()),
            ),
            (BROKER_PSK_KEY.into(), ByteString(psk.to_vec())),
        ])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_deploy_files_load_and_kustomize_lists_them_all() {
        let m = Manifests::embedded();
        assert_eq!(
            m.namespace.metadata.name.as_deref(),
            Some(DEFAULT_NAMESPACE)
        );
        assert_eq!(
            m.config_map.metadata.name.as_deref(),
            Some(AGENT_CONFIG_MAP)
        );
        let kustomization = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kustomization.yaml"),
        )
        .unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&kustomization).unwrap();
        let listed: Vec<&str> = doc["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        for (file, _) in FILES {
            assert!(listed.contains(file), "kustomization.yaml misses {file}");
        }
        for crd in crate::broker::crd::all() {
            let file = format!("crds/{}", crate::broker::crd::file_name(&crd));
            assert!(
                listed.contains(&file.as_str()),
                "kustomization.yaml misses {file}"
            );
        }
        assert_eq!(listed.len(), FILES.len() + crate::broker::crd::all().len());
    }

    #[test]
    fn the_example_config_is_what_join_writes() {
        let example = Manifests::embedded().config_map.data.unwrap()[AGENT_CONFIG_KEY].clone();
        let written = agent_config(
            "example",
            DEFAULT_NAMESPACE,
            &["10.244.0.0/16".parse().unwrap()],
            &["10.96.0.0/12".parse().unwrap()],
            None,
        );
        let parse = |s: &str| serde_yaml::from_str::<serde_yaml::Value>(s).unwrap();
        assert_eq!(parse(&example), parse(&written));
    }

    #[test]
    fn a_globalnet_cluster_gets_its_slice_in_the_config() {
        let global = GlobalSlice {
            cidr: "242.3.0.0/16".parse().unwrap(),
            settings: super::super::globalnet_info::GlobalnetSettings {
                enabled: true,
                cidr_range: "242.0.0.0/8".parse().unwrap(),
                cluster_size: 65536,
            },
        };
        let text = agent_config(
            "east",
            DEFAULT_NAMESPACE,
            &["10.244.0.0/16".parse().unwrap()],
            &["10.96.0.0/12".parse().unwrap()],
            Some(&global),
        );
        let config = crate::agent::config::AgentConfig::parse(&text).unwrap();
        assert!(config.globalnet.enabled);
        assert_eq!(config.globalnet.global_cidr, Some(global.cidr));
    }

    #[test]
    fn the_daemon_set_runs_the_agent_as_the_contract_says() {
        let pod = Manifests::embedded()
            .daemon_set
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(true));
        let env = &container.env.as_ref().unwrap()[0];
        assert_eq!(env.name, "NODE_NAME");
        let field = env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "spec.nodeName");
        let mounts: Vec<&str> = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.mount_path.as_str())
            .collect();
        for path in [
            BROKER_DIR,
            "/dev/net/tun",
            "/var/lib/strait",
            "/var/run/wireguard",
        ] {
            assert!(mounts.contains(&path), "{path} not mounted: {mounts:?}");
        }
        let secret = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|v| v.secret.as_ref())
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some(BROKER_SECRET));
        assert_eq!(secret.default_mode, Some(0o400));
    }

    #[test]
    fn patching_moves_everything_to_the_namespace_and_sets_image_and_config() {
        let m = Manifests::for_cluster(
            "net-a",
            Some("registry.example/strait:1"),
            "cluster_id: a\n".into(),
        );
        assert_eq!(m.namespace.metadata.name.as_deref(), Some("net-a"));
        assert_eq!(
            m.namespace.metadata.labels.as_ref().unwrap()[NAMESPACE_NAME_LABEL],
            "net-a"
        );
        for ns in [
            &m.service_account.metadata.namespace,
            &m.daemon_set.metadata.namespace,
            &m.service_monitor.metadata.namespace,
            &m.config_map.metadata.namespace,
        ] {
            assert_eq!(ns.as_deref(), Some("net-a"));
        }
        let subject = &m.cluster_role_binding.subjects.as_ref().unwrap()[0];
        assert_eq!(subject.namespace.as_deref(), Some("net-a"));
        let pod = m.daemon_set.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("registry.example/strait:1")
        );
        assert_eq!(
            m.config_map.data.unwrap()[AGENT_CONFIG_KEY],
            "cluster_id: a\n"
        );
        // Without an image, the file's stays.
        let m = Manifests::for_cluster("strait", None, String::new());
        let pod = m.daemon_set.spec.unwrap().template.spec.unwrap();
        assert!(pod.containers[0]
            .image
            .as_deref()
            .unwrap()
            .contains("strait"));
    }

    #[test]
    fn the_broker_kubeconfig_carries_token_ca_and_namespace() {
        let access = BrokerKubeconfig {
            url: "https://192.0.2.10:6443",
            ca_pem: "PEM",
            namespace: "submariner-k8s-broker",
            user: "strait-cluster-east",
            token: "tok",
        };
        let yaml = access.to_yaml();
        let config = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        let context = config.contexts[0].context.as_ref().unwrap();
        assert_eq!(context.namespace.as_deref(), Some("submariner-k8s-broker"));
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://192.0.2.10:6443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(BASE64.encode("PEM").as_str())
        );
        assert_eq!(access.token_in(&yaml).as_deref(), Some("tok"));
        let elsewhere = BrokerKubeconfig {
            url: "https://198.51.100.1:6443",
            ..access.clone()
        };
        assert_eq!(elsewhere.token_in(&yaml), None);
    }
}
