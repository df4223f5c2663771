//! Globalnet's exported services in Kubernetes mode: every MCS
//! `ServiceExport` of the local cluster names a Service, and its global
//! ingress IP leads to the Service's ready endpoints (from its
//! EndpointSlices), spread over them. Not to its ClusterIP: a connection
//! gets one destination NAT, so after ours kube-proxy's (iptables or
//! nftables mode) would never run. A headless Service has no address of
//! its own: each of its ready pods gets a global IP instead, as in
//! Submariner. What became of each export is written back: a
//! `GlobalIngressIP` (Submariner's) per exported service or pod with its
//! address, and a `Valid` condition on the `ServiceExport`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::json;
use tokio::sync::watch;

use crate::broker::crd::SUBMARINER_GROUP;
use crate::broker::kube::{Cache, Watched, FIELD_MANAGER};
use crate::broker::mcs;
use crate::net::nft::Protocol;
use crate::plan::globalnet::{Export, ExportedPod};

fn service_export_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(mcs::GROUP, mcs::VERSION, "ServiceExport"),
        "serviceexports",
    )
}

fn global_ingress_ip_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SUBMARINER_GROUP, "v1", "GlobalIngressIP"),
        "globalingressips",
    )
}

fn service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Service"), "services")
}

fn endpoint_slice_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", "v1", "EndpointSlice"),
        "endpointslices",
    )
}

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The local cluster's ServiceExports, Services and EndpointSlices,
/// watched in every namespace.
pub struct ServiceExports {
    client: Client,
    exports: Watched,
    services: Watched,
    endpoint_slices: Watched,
}

impl ServiceExports {
    /// Starts the watches; `changes` is bumped on every change.
    pub fn start(client: Client, changes: &watch::Sender<u64>) -> ServiceExports {
        let watch = |resource: ApiResource| Watched::everywhere(&client, &resource, changes);
        ServiceExports {
            exports: watch(service_export_resource()),
            services: watch(service_resource()),
            endpoint_slices: watch(endpoint_slice_resource()),
            client,
        }
    }

    /// The exports and exported pods as they stand, and the refused
    /// exports with the reason.
    pub fn current(&self, local: &[IpNet]) -> Exported {
        exports_of(
            &self.exports.objects(),
            &self.services.objects(),
            &self.endpoint_slices.objects(),
            local,
        )
    }

    /// Writes what became of the exports: a `GlobalIngressIP` per export
    /// or exported pod with an address, none for the others (`gone`: those
    /// that had one), and each `ServiceExport`'s `Valid` condition.
    pub async fn report(
        &self,
        ingress: &BTreeMap<String, Ipv4Addr>,
        pods: &[ExportedPod],
        refused: &BTreeMap<String, String>,
        gone: &[String],
    ) -> Result<(), kube::Error> {
        let pod_of: BTreeMap<&str, &ExportedPod> =
            pods.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut pods_of_service: BTreeMap<&str, usize> = BTreeMap::new();
        for (key, ip) in ingress {
            let spec = match pod_of.get(key.as_str()) {
                Some(pod) => {
                    *pods_of_service.entry(pod.service.as_str()).or_default() += 1;
                    let mut spec = json!({
                        "target": "HeadlessServicePod",
                        "serviceRef": { "name": split(&pod.service).1 },
                    });
                    if let Some(name) = &pod.pod {
                        spec["podRef"] = json!({ "name": name });
                    }
                    spec
                }
                None => {
                    json!({ "target": "ClusterIPService", "serviceRef": { "name": split(key).1 } })
                }
            };
            self.write_global_ingress_ip(key, spec, *ip).await?;
            if !pod_of.contains_key(key.as_str()) {
                self.set_valid(key, true, "Exported", &format!("global ingress IP {ip}"))
                    .await?;
            }
        }
        for (service, count) in pods_of_service {
            let message = format!("global ingress IPs for {count} pods of a headless service");
            self.set_valid(service, true, "Exported", &message).await?;
        }
        for (key, reason) in refused {
            self.set_valid(key, false, "Refused", reason).await?;
        }
        for key in gone {
            let (namespace, name) = split(key);
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                namespace,
                &global_ingress_ip_resource(),
            );
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Applies the `GlobalIngressIP` `key` with `spec` and `ip` in its
    /// status.
    async fn write_global_ingress_ip(
        &self,
        key: &str,
        spec: serde_json::Value,
        ip: Ipv4Addr,
    ) -> Result<(), kube::Error> {
        let (namespace, name) = split(key);
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &global_ingress_ip_resource(),
        );
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let object = json!({
            "apiVersion": "submariner.io/v1",
            "kind": "GlobalIngressIP",
            "metadata": { "name": name, "namespace": namespace },
            "spec": spec,
        });
        api.patch(name, &params, &Patch::Apply(object)).await?;
        let status = json!({
            "apiVersion": "submariner.io/v1",
            "kind": "GlobalIngressIP",
            "metadata": { "name": name, "namespace": namespace },
            "status": {
                "allocatedIP": ip.to_string(),
                "conditions": [condition("Allocated", true, "Success", "")],
            },
        });
        api.patch_status(name, &params, &Patch::Apply(status))
            .await?;
        Ok(())
    }

    async fn set_valid(
        &self,
        key: &str,
        valid: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let (namespace, name) = split(key);
        // An export deleted meanwhile has no status to write.
        if !self.exports.objects().contains_key(key) {
            return Ok(());
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &service_export_resource());
        let status = json!({
            "apiVersion": format!("{}/{}", mcs::GROUP, mcs::VERSION),
            "kind": "ServiceExport",
            "metadata": { "name": name, "namespace": namespace },
            "status": { "conditions": [condition("Valid", valid, reason, message)] },
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(name, &params, &Patch::Apply(status))
            .await
            .map(|_| ())
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "lastTransitionTime": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "reason": reason,
        "message": message,
    })
}

/// `namespace/name` apart.
fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// What the local cluster exports.
#[derive(Debug, Default)]
pub struct Exported {
    /// A Service's ports and ready endpoints, named `namespace/name`.
    pub exports: Vec<Export>,
    /// The ready pods of headless Services.
    pub pods: Vec<ExportedPod>,
    /// Export (`namespace/name`) → why it is refused.
    pub refused: BTreeMap<String, String>,
}

/// Every exported service's ports and ready endpoints, or its pods for a
/// headless one, or why the export is refused.
fn exports_of(
    service_exports: &Cache,
    services: &Cache,
    endpoint_slices: &Cache,
    local: &[IpNet],
) -> Exported {
    let mut exported = Exported::default();
    for key in service_exports.keys() {
        let slices: Vec<EndpointSlice> = endpoint_slices
            .values()
            .filter(|s| {
                let (namespace, name) = split(key);
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == name)
            })
            .filter_map(|s| typed(s).ok())
            .collect();
        match service_exports_of(key, services.get(key), &slices, local) {
            Ok(Targets::Ports(found)) => exported.exports.extend(found),
            Ok(Targets::Pods(found)) => exported.pods.extend(found),
            Err(reason) => {
                exported.refused.insert(key.clone(), reason);
            }
        }
    }
    exported
}

/// Where an exported Service's global address or addresses lead.
enum Targets {
    Ports(Vec<Export>),
    Pods(Vec<ExportedPod>),
}

/// The ready endpoints of `slices` in this cluster, with the name of the
/// pod behind each when the slice says.
fn ready_endpoints<'a>(
    slices: &'a [EndpointSlice],
    local: &'a [IpNet],
) -> impl Iterator<Item = (Ipv4Addr, Option<String>)> + 'a {
    slices
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| {
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            e.addresses.iter().map(move |a| (a.clone(), pod.clone()))
        })
        .filter_map(|(a, pod)| Some((a.parse::<Ipv4Addr>().ok()?, pod)))
        .filter(|(a, _)| local.iter().any(|n| n.contains(&IpAddr::V4(*a))))
}

/// A headless Service's ready pods, each with the name of the
/// `GlobalIngressIP` Submariner would give it: `pod-<pod name>`.
fn headless_pods(key: &str, slices: &[EndpointSlice], local: &[IpNet]) -> Vec<ExportedPod> {
    let (namespace, _) = split(key);
    let mut pods: Vec<ExportedPod> = ready_endpoints(slices, local)
        .map(|(address, pod)| {
            let id = pod
                .clone()
                .unwrap_or_else(|| address.to_string().replace('.', "-"));
            ExportedPod {
                name: format!("{namespace}/pod-{id}"),
                address,
                service: key.to_string(),
                pod,
            }
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods.dedup_by(|a, b| a.name == b.name);
    pods
}

fn typed<T: serde::de::DeserializeOwned>(object: &DynamicObject) -> Result<T, serde_json::Error> {
    serde_json::to_value(object).and_then(serde_json::from_value)
}

fn service_exports_of(
    key: &str,
    service: Option<&DynamicObject>,
    slices: &[EndpointSlice],
    local: &[IpNet],
) -> Result<Targets, String> {
    let service = service.ok_or("its service does not exist")?;
    let service: Service = typed(service).map_err(|e| format!("its service is malformed: {e}"))?;
    let spec = service.spec.unwrap_or_default();
    if spec.cluster_ip.as_deref() == Some("None") {
        let pods = headless_pods(key, slices, local);
        if pods.is_empty() {
            return Err("its headless service has no ready pods in this cluster".into());
        }
        return Ok(Targets::Pods(pods));
    }
    let ports = spec.ports.unwrap_or_default();
    if ports.is_empty() {
        return Err("its service has no ports".into());
    }
    let mut exports = Vec::new();
    for port in &ports {
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => return Err(format!("port {}: {other} is not supported", port.port)),
        };
        let service_port =
            u16::try_from(port.port).map_err(|_| format!("port {} is out of range", port.port))?;
        for slice in slices {
            // The slice's port of the same name is where this one leads.
            let Some(target_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            let ready = ready_endpoints(std::slice::from_ref(slice), local);
            exports.extend(ready.map(|(address, _)| Export {
                name: key.to_string(),
                address,
                port: service_port,
                protocol,
                target_port: Some(target_port),
            }));
        }
    }
    if exports.is_empty() {
        return Err("its service has no ready endpoints in this cluster".into());
    }
    Ok(Targets::Ports(exports))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        data: serde_json::Value,
    ) -> (String, DynamicObject) {
        let mut o = DynamicObject::new(name, resource).within(namespace);
        o.data = data;
        (format!("{namespace}/{name}"), o)
    }

    #[test]
    fn exported_services_lead_to_their_ready_endpoints_or_say_why_not() {
        let local: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let export = |name: &str| object(&service_export_resource(), "shop", name, json!({}));
        let service = |name: &str, spec: serde_json::Value| {
            object(&service_resource(), "shop", name, json!({ "spec": spec }))
        };
        let slice = |service: &str, body: serde_json::Value| {
            let (key, mut o) = object(
                &endpoint_slice_resource(),
                "shop",
                &format!("{service}-x1"),
                body,
            );
            o.metadata.labels =
                Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into());
            (key, o)
        };
        let exports: Cache = ["web", "db", "gone", "headless", "idle"]
            .into_iter()
            .map(export)
            .collect();
        let services: Cache = [
            service("web", json!({ "clusterIP": "10.96.0.10", "ports": [
                { "name": "http", "port": 80 }, { "name": "dns", "port": 53, "protocol": "UDP" }] })),
            service("db", json!({ "clusterIP": "10.96.0.11", "ports": [{ "port": 5432, "protocol": "SCTP" }] })),
            service("headless", json!({ "clusterIP": "None", "ports": [{ "port": 80 }] })),
            service("idle", json!({ "clusterIP": "10.96.0.12", "ports": [{ "port": 80 }] })),
        ]
        .into_iter()
        .collect();
        let slices: Cache = [
            slice("web", json!({ "addressType": "IPv4",
                "ports": [{ "name": "http", "port": 8080 }, { "name": "dns", "port": 5353, "protocol": "UDP" }],
                "endpoints": [
                    { "addresses": ["10.1.1.2"], "conditions": { "ready": true } },
                    { "addresses": ["10.1.2.2"] },
                    { "addresses": ["10.1.3.2"], "conditions": { "ready": false } },
                    { "addresses": ["192.0.2.7"] }] })),
            slice("idle", json!({ "addressType": "IPv4", "ports": [{ "port": 8080 }], "endpoints": [] })),
            slice("headless", json!({ "addressType": "IPv4", "ports": [{ "port": 80 }], "endpoints": [
                { "addresses": ["10.1.1.5"], "targetRef": { "kind": "Pod", "name": "db-0" } },
                { "addresses": ["10.1.1.6"], "conditions": { "ready": false }, "targetRef": { "kind": "Pod", "name": "db-1" } },
                { "addresses": ["10.1.1.7"] }] })),
        ]
        .into_iter()
        .collect();
        let Exported {
            exports: found,
            pods,
            refused,
        } = exports_of(&exports, &services, &slices, &local);
        let targets: Vec<(u16, String)> = found
            .iter()
            .map(|e| (e.port, format!("{}:{}", e.address, e.target_port.unwrap())))
            .collect();
        assert_eq!(
            targets,
            [
                (80, "10.1.1.2:8080".to_string()),
                (80, "10.1.2.2:8080".to_string()),
                (53, "10.1.1.2:5353".to_string()),
                (53, "10.1.2.2:5353".to_string()),
            ]
        );
        assert!(found.iter().all(|e| e.name == "shop/web"));
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused["shop/gone"].contains("does not exist"));
        assert!(refused["shop/db"].contains("SCTP"));
        assert!(refused["shop/idle"].contains("no ready endpoints"));
        // A headless service's ready pods, each on its own.
        let pods: Vec<(&str, String, Option<&str>)> = pods
            .iter()
            .map(|p| (p.name.as_str(), p.address.to_string(), p.pod.as_deref()))
            .collect();
        assert_eq!(
            pods,
            [
                ("shop/pod-10-1-1-7", "10.1.1.7".to_string(), None),
                ("shop/pod-db-0", "10.1.1.5".to_string(), Some("db-0")),
            ]
        );
    }
}
