//! The CRDs Strait generates (`strait::broker::crd::all()`, the files in
//! deploy/crds/) against a real kube-apiserver: they are accepted and
//! served, objects of every kind can be created, watched, updated and
//! deleted, and the schemas refuse a field of the wrong type or out of
//! range.

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::GroupVersionKind;
use kube::ResourceExt;
use serde_json::{json, Value};
use strait_netns_tests::kube::{create_namespace, install_crds, ApiServer};

const NAMESPACE: &str = "crds";

/// A valid object of each kind, and the same with one field the schema
/// refuses (of the wrong type, or beyond Submariner's limit), for the main
/// resource or (`status: true`) for `/status`.
struct Case {
    kind: &'static str,
    valid: Value,
    wrong: Value,
    status: bool,
}

fn cases() -> Vec<Case> {
    let endpoint = json!({
        "cluster_id": "east", "cable_name": "c", "hostname": "gw", "subnets": ["10.1.0.0/16"],
        "private_ip": "192.0.2.10", "public_ip": "", "nat_enabled": false, "backend": "wireguard",
        "backend_config": { "publicKey": "k" }
    });
    vec![
        Case {
            kind: "Cluster",
            valid: json!({ "spec": { "cluster_id": "east", "cluster_cidr": ["10.1.0.0/16"], "service_cidr": ["10.101.0.0/16"], "global_cidr": [], "color_codes": ["blue"] } }),
            wrong: json!({ "spec": { "cluster_id": "east", "cluster_cidr": "10.1.0.0/16" } }),
            status: false,
        },
        Case {
            kind: "Endpoint",
            valid: json!({ "spec": endpoint }),
            wrong: json!({ "spec": { "cluster_id": "east", "cable_name": "c", "nat_enabled": "yes" } }),
            status: false,
        },
        Case {
            kind: "Gateway",
            valid: json!({ "status": { "version": "v", "haStatus": "active", "localEndpoint": endpoint, "statusFailure": "",
                "connections": [{ "status": "connected", "statusMessage": "", "endpoint": endpoint, "usingIP": "192.0.2.11", "usingNAT": false,
                    "latencyRTT": { "last": "1ms", "min": "1ms", "average": "1ms", "max": "1ms", "stdDev": "0s" } }] } }),
            wrong: json!({ "status": { "haStatus": "active", "localEndpoint": endpoint, "connections": "none" } }),
            status: false,
        },
        Case {
            kind: "ClusterGlobalEgressIP",
            valid: json!({ "spec": { "numGlobalIPs": 8 } }),
            wrong: json!({ "spec": { "numGlobalIPs": 21 } }),
            status: false,
        },
        Case {
            kind: "GlobalEgressIP",
            valid: json!({ "spec": { "numberOfIPs": 2, "podSelector": { "matchLabels": { "app": "db" } } } }),
            wrong: json!({ "spec": { "podSelector": "app=db" } }),
            status: false,
        },
        Case {
            kind: "GlobalIngressIP",
            valid: json!({ "spec": { "target": "ClusterIPService", "serviceRef": { "name": "web" } } }),
            wrong: json!({ "spec": { "target": "ClusterIPService", "serviceRef": "web" } }),
            status: false,
        },
        Case {
            kind: "ServiceExport",
            valid: json!({}),
            wrong: json!({ "status": { "conditions": "exported" } }),
            status: true,
        },
        Case {
            kind: "ServiceImport",
            valid: json!({ "spec": { "type": "ClusterSetIP", "ips": ["10.0.0.9"], "ports": [{ "port": 80, "protocol": "TCP" }] } }),
            wrong: json!({ "spec": { "type": "ClusterSetIP", "ports": [{ "port": "eighty" }] } }),
            status: false,
        },
    ]
}

/// The served resource of `kind`, from its CRD.
fn resource(kind: &str) -> (ApiResource, CustomResourceDefinition) {
    let crd = strait::broker::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let version = &crd.spec.versions[0].name;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&crd.spec.group, version, kind),
        &crd.spec.names.plural,
    );
    (resource, crd)
}

fn object(resource: &ApiResource, name: &str, namespaced: bool, body: &Value) -> Value {
    let mut object = body.clone();
    object["apiVersion"] = json!(resource.api_version);
    object["kind"] = json!(resource.kind);
    object["metadata"] = match namespaced {
        true => json!({ "name": name, "namespace": NAMESPACE }),
        false => json!({ "name": name }),
    };
    object
}

/// Watch event types of `name` after resourceVersion `since`, until
/// `count` arrived.
async fn watched(
    api: Api<DynamicObject>,
    name: String,
    since: String,
    count: usize,
) -> Vec<String> {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(20);
    let mut stream = api
        .watch(&params, &since)
        .await
        .expect("starting a watch")
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < count {
        match stream.next().await {
            Some(Ok(WatchEvent::Added(_))) => seen.push("Added".to_string()),
            Some(Ok(WatchEvent::Modified(_))) => seen.push("Modified".to_string()),
            Some(Ok(WatchEvent::Deleted(_))) => seen.push("Deleted".to_string()),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("watching {name}: {e}"),
            None => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_served_written_watched_and_type_checked() {
    let server = ApiServer::start();
    let client = server.client();
    install_crds(&client).await;
    create_namespace(&client, NAMESPACE).await;
    for case in cases() {
        let (resource, crd) = resource(case.kind);
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(!columns.is_empty(), "{}: no printer columns", case.kind);
        let namespaced = crd.spec.scope == "Namespaced";
        let api: Api<DynamicObject> = match namespaced {
            true => Api::namespaced_with(client.clone(), NAMESPACE, &resource),
            false => Api::all_with(client.clone(), &resource),
        };
        let name = format!("{}-1", case.kind.to_lowercase());
        // Watching from the list's version sees every change after it.
        let since = api
            .list(&Default::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let watch = tokio::spawn(watched(api.clone(), name.clone(), since, 3));

        let made: DynamicObject =
            serde_json::from_value(object(&resource, &name, namespaced, &case.valid)).unwrap();
        let created = api
            .create(&PostParams::default(), &made)
            .await
            .unwrap_or_else(|e| panic!("creating a valid {}: {e}", case.kind));
        for (key, value) in case.valid.as_object().unwrap() {
            if key != "status" || crd.spec.versions[0].subresources.is_none() {
                assert_eq!(
                    &created.data[key], value,
                    "{} {key} came back changed",
                    case.kind
                );
            }
        }
        let label = json!({ "metadata": { "labels": { "touched": "yes" } } });
        let updated = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap_or_else(|e| panic!("updating a {}: {e}", case.kind));
        assert_eq!(
            updated.labels().get("touched").map(String::as_str),
            Some("yes")
        );
        api.delete(&name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting a {}: {e}", case.kind));
        let seen = watch.await.unwrap();
        assert_eq!(seen, ["Added", "Modified", "Deleted"], "{}", case.kind);

        // The schema refuses a field of the wrong type.
        let wrong_name = format!("{}-wrong", case.kind.to_lowercase());
        let refused = if case.status {
            let made: DynamicObject =
                serde_json::from_value(object(&resource, &wrong_name, namespaced, &case.valid))
                    .unwrap();
            api.create(&PostParams::default(), &made).await.unwrap();
            api.patch_status(
                &wrong_name,
                &PatchParams::default(),
                &Patch::Merge(&case.wrong),
            )
            .await
            .err()
        } else {
            let wrong: DynamicObject =
                serde_json::from_value(object(&resource, &wrong_name, namespaced, &case.wrong))
                    .unwrap();
            api.create(&PostParams::default(), &wrong).await.err()
        };
        match refused {
            Some(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}: {}", case.kind, status.message)
            }
            other => panic!("{}: a wrong type was not refused: {other:?}", case.kind),
        }
    }
}
