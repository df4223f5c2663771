//! The CustomResourceDefinitions of every kind Strait reads or writes,
//! generated from the Rust types: what `deploy-broker` and `join` apply,
//! and what `deploy/crds/` holds (a unit test keeps the two equal).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde_json::json;

use super::globalnet_types::{ClusterGlobalEgressIPBody, GlobalEgressIPBody, GlobalIngressIPBody};
use super::mcs::{ServiceExportBody, ServiceImportBody};
use super::types::{ClusterSpec, EndpointSpec, GatewayStatus, Spec, Status};

/// The group of Submariner's kinds, which Strait shares.
pub const SUBMARINER_GROUP: &str = "submariner.io";

/// A printer column: name, JSONPath, type.
type Column = (&'static str, &'static str, &'static str);

struct Definition {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    columns: &'static [Column],
    /// Whether `status` is a subresource (written through `/status`).
    status_subresource: bool,
    /// Whether its objects live outside namespaces.
    cluster_scoped: bool,
    schema: fn() -> JSONSchemaProps,
}

const DEFINITIONS: &[Definition] = &[
    Definition {
        group: SUBMARINER_GROUP,
        version: "v1",
        kind: "Cluster",
        plural: "clusters",
        columns: &[
            ("Cluster CIDR", ".spec.cluster_cidr", "string"),
            ("Service CIDR", ".spec.service_cidr", "string"),
            ("Global CIDR", ".spec.global_cidr", "string"),
        ],
        status_subresource: false,
        cluster_scoped: false,
        schema: schema_of::<Spec<ClusterSpec>>,
    },
    Definition {
        group: SUBMARINER_GROUP,
        version: "v1",
        kind: "Endpoint",
        plural: "endpoints",
        columns: &[
            ("Cluster", ".spec.cluster_id", "string"),
            ("Hostname", ".spec.hostname", "string"),
            ("Private IP", ".spec.private_ip", "string"),
            ("Public IP", ".spec.public_ip", "string"),
            ("Subnets", ".spec.subnets", "string"),
        ],
        status_subresource: false,
        cluster_scoped: false,
        schema: schema_of::<Spec<EndpointSpec>>,
    },
    // Submariner's Gateway has a status and no spec, and no status
    // subresource: its agent writes the whole object.
    Definition {
        group: SUBMARINER_GROUP,
        version: "v1",
        kind: "Gateway",
        plural: "gateways",
        columns: &[
            ("HA Status", ".status.haStatus", "string"),
            ("Cluster", ".status.localEndpoint.cluster_id", "string"),
            ("Failure", ".status.statusFailure", "string"),
        ],
        status_subresource: false,
        cluster_scoped: false,
        schema: schema_of::<Status<GatewayStatus>>,
    },
    Definition {
        group: SUBMARINER_GROUP,
        version: "v1",
        kind: "ClusterGlobalEgressIP",
        plural: "clusterglobalegressips",
        columns: &[
            ("IPs", ".spec.numGlobalIPs", "integer"),
            ("Allocated", ".status.allocatedIPs", "string"),
        ],
        status_subresource: true,
        cluster_scoped: true,
        schema: schema_of::<ClusterGlobalEgressIPBody>,
    },
    Definition {
        group: SUBMARINER_GROUP,
        version: "v1",
        kind: "GlobalEgressIP",
        plural: "globalegressips",
        columns: &[
            ("IPs", ".spec.numberOfIPs", "integer"),
            ("Allocated", ".status.allocatedIPs", "string"),
        ],
        status_subresource: true,
        cluster_scoped: false,
        schema: schema_of::<GlobalEgressIPBody>,
    },
    Definition {
        group: SUBMARINER_GROUP,
        version: "v1",
        kind: "GlobalIngressIP",
        plural: "globalingressips",
        columns: &[
            ("Target", ".spec.target", "string"),
            ("Service", ".spec.serviceRef.name", "string"),
            ("IP", ".status.allocatedIP", "string"),
        ],
        status_subresource: true,
        cluster_scoped: false,
        schema: schema_of::<GlobalIngressIPBody>,
    },
    Definition {
        group: super::mcs::GROUP,
        version: super::mcs::VERSION,
        kind: "ServiceExport",
        plural: "serviceexports",
        columns: &[],
        status_subresource: true,
        cluster_scoped: false,
        schema: schema_of::<ServiceExportBody>,
    },
    Definition {
        group: super::mcs::GROUP,
        version: super::mcs::VERSION,
        kind: "ServiceImport",
        plural: "serviceimports",
        columns: &[
            ("Type", ".spec.type", "string"),
            ("IP", ".spec.ips", "string"),
        ],
        status_subresource: true,
        cluster_scoped: false,
        schema: schema_of::<ServiceImportBody>,
    },
];

/// The schema of an object whose body (spec and/or status) is `B`, as the
/// API server wants it: structural, inlined, no `$schema`.
fn schema_of<B: JsonSchema>() -> JSONSchemaProps {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<B>())
        .expect("a schemars schema is JSON");
    drop_defaults(&mut schema);
    let object = schema
        .as_object_mut()
        .expect("a body's schema is an object");
    object.remove("title");
    let properties = object
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties are an object");
    properties.insert("apiVersion".into(), json!({ "type": "string" }));
    properties.insert("kind".into(), json!({ "type": "string" }));
    properties.insert("metadata".into(), json!({ "type": "object" }));
    serde_json::from_value(schema).expect("a structural schema is a JSONSchemaProps")
}

/// Removes `default`s: the serde defaults that let Strait read sparse
/// objects must not become values the API server writes into them (a
/// defaulted empty `cluster_id` would even fail its own length check).
fn drop_defaults(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            map.remove("default");
            map.values_mut().for_each(drop_defaults);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_defaults),
        _ => {}
    }
}

fn definition(d: &Definition) -> CustomResourceDefinition {
    let columns: Vec<_> = d
        .columns
        .iter()
        .map(|(name, path, type_)| CustomResourceColumnDefinition {
            name: name.to_string(),
            json_path: path.to_string(),
            type_: type_.to_string(),
            ..Default::default()
        })
        .chain([CustomResourceColumnDefinition {
            name: "Age".into(),
            json_path: ".metadata.creationTimestamp".into(),
            type_: "date".into(),
            ..Default::default()
        }])
        .collect();
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{}.{}", d.plural, d.group)),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "strait".to_string(),
            )])),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: d.group.into(),
            names: CustomResourceDefinitionNames {
                kind: d.kind.into(),
                list_kind: Some(format!("{}List", d.kind)),
                plural: d.plural.into(),
                singular: Some(d.kind.to_lowercase()),
                ..Default::default()
            },
            scope: if d.cluster_scoped {
                "Cluster"
            } else {
                "Namespaced"
            }
            .into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: d.version.into(),
                served: true,
                storage: true,
                additional_printer_columns: Some(columns),
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some((d.schema)()),
                }),
                subresources: d.status_subresource.then(|| CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(json!({}))),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

/// Every CRD, in a fixed order.
pub fn all() -> Vec<CustomResourceDefinition> {
    DEFINITIONS.iter().map(definition).collect()
}

/// The file a CRD is kept in under `deploy/crds/`, named as
/// controller-gen names them.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as YAML, with a header saying where it comes from.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD serializes");
    format!("# Generated from src/broker by `STRAIT_UPDATE_CRDS=1 cargo test crds`: do not edit.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// CI fails here when the checked-in CRDs are not what the types
    /// generate; `STRAIT_UPDATE_CRDS=1` rewrites them.
    #[test]
    fn crds_in_deploy_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
        let update = std::env::var_os("STRAIT_UPDATE_CRDS").is_some();
        let mut expected: Vec<String> = Vec::new();
        for crd in all() {
            let name = file_name(&crd);
            let text = to_yaml(&crd);
            let path = dir.join(&name);
            if update {
                std::fs::write(&path, &text).unwrap();
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "deploy/crds/{name} differs from what the types generate: run `STRAIT_UPDATE_CRDS=1 cargo test crds` and commit"
            );
            expected.push(name);
        }
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        present.sort();
        expected.sort();
        assert_eq!(present, expected, "deploy/crds holds other CRD files");
    }

    #[test]
    fn schemas_keep_submariner_field_names_and_limits() {
        let endpoint = serde_json::to_value(all()[1].clone()).unwrap();
        let spec = &endpoint["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        for field in [
            "cluster_id",
            "cable_name",
            "healthCheckIP",
            "backend_config",
        ] {
            assert!(spec.get(field).is_some(), "{field} missing: {spec}");
        }
        assert_eq!(spec["cluster_id"]["maxLength"], 63);
        assert_eq!(
            spec["backend_config"]["additionalProperties"]["type"],
            "string"
        );
        let gateway = serde_json::to_value(all()[2].clone()).unwrap();
        let version = &gateway["spec"]["versions"][0];
        assert!(
            version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["haStatus"]
                .is_object()
        );
        assert!(version.get("subresources").is_none());
        assert!(!gateway.to_string().contains("\"default\""));
    }
}
