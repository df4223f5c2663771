//! Who may do what on the broker: the broker administrator (what the
//! broker-info token is), one account per joined cluster, and the
//! admission policy that limits a cluster's writes to its own objects,
//! which RBAC alone cannot express.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::broker::crd::{self, SUBMARINER_GROUP};

/// Submariner's name for the broker administrator, so that its tools
/// recognise ours.
pub const BROKER_ADMIN: &str = "submariner-k8s-broker-admin";
/// The prefix of a joined cluster's account: `strait-cluster-<ID>`.
pub const CLUSTER_ACCOUNT_PREFIX: &str = "strait-cluster-";
/// The annotation on a cluster's account saying which cluster joined with
/// that id: the UID of the joining cluster's `kube-system` namespace.
pub const CLUSTER_IDENTITY_ANNOTATION: &str = "strait.io/cluster-identity";
/// The kinds a joined cluster writes: its own only.
pub const CLUSTER_WRITABLE: [&str; 2] = ["clusters", "endpoints"];

pub fn cluster_account(cluster_id: &str) -> String {
    format!("{CLUSTER_ACCOUNT_PREFIX}{cluster_id}")
}

/// The user name the API server gives `account`'s tokens.
pub fn service_account_user(namespace: &str, account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{account}")
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(String::from),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".to_string(),
            "strait".to_string(),
        )])),
        ..Default::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete"];

/// One rule per API group of the broker's kinds.
fn broker_kind_rules(verbs: &[&str]) -> Vec<PolicyRule> {
    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for definition in crd::all() {
        by_group
            .entry(definition.spec.group)
            .or_default()
            .push(definition.spec.names.plural);
    }
    by_group
        .into_iter()
        .map(|(group, plurals)| {
            let plurals: Vec<&str> = plurals.iter().map(String::as_str).collect();
            rule(&[&group], &plurals, verbs)
        })
        .collect()
}

pub fn service_account(
    name: &str,
    namespace: &str,
    annotations: BTreeMap<String, String>,
) -> ServiceAccount {
    let mut metadata = meta(name, Some(namespace));
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    ServiceAccount {
        metadata,
        ..Default::default()
    }
}

pub fn role_binding(name: &str, namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(name, Some(namespace)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    }
}

/// What the broker administrator may do in the broker namespace: every
/// broker kind, and the accounts, roles and tokens of joining clusters.
pub fn admin_role(namespace: &str) -> Role {
    let all = &["*"];
    let mut rules = broker_kind_rules(all);
    rules.extend([
        rule(&[""], &["configmaps", "secrets", "serviceaccounts"], all),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            all,
        ),
    ]);
    Role {
        metadata: meta(BROKER_ADMIN, Some(namespace)),
        rules: Some(rules),
    }
}

/// What a joined cluster may do: read every broker kind and the globalnet
/// ConfigMap, write clusters and endpoints (its own only: see
/// [`ownership_policy`]).
pub fn cluster_role(cluster_id: &str, namespace: &str) -> Role {
    let mut rules = broker_kind_rules(READ);
    rules.push(rule(&[SUBMARINER_GROUP], &CLUSTER_WRITABLE, WRITE));
    rules.push(rule(&[""], &["configmaps"], READ));
    Role {
        metadata: meta(&cluster_account(cluster_id), Some(namespace)),
        rules: Some(rules),
    }
}

/// The name of the admission policy (and its binding) of one broker
/// namespace; they are cluster-wide objects.
pub fn ownership_policy_name(namespace: &str) -> String {
    format!("strait-broker-ownership-{namespace}")
}

/// A CEL test that `o` is the requesting cluster's: its `spec.cluster_id`
/// is the cluster's id and its name is the id or starts with `<id>-`.
fn owned(o: &str) -> String {
    format!(
        "{o} == null || ({o}.spec.cluster_id == variables.clusterID && \
         ({o}.metadata.name == variables.clusterID || {o}.metadata.name.startsWith(variables.clusterID + '-')))"
    )
}

/// For requests by a joined cluster's account in `namespace`: refuses
/// creating, changing or deleting a cluster or endpoint that is not that
/// cluster's, before and after the change.
pub fn ownership_policy(
    namespace: &str,
) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let name = ownership_policy_name(namespace);
    let user_prefix = service_account_user(namespace, CLUSTER_ACCOUNT_PREFIX);
    let message = |which: &str| {
        format!(
            "'cluster ' + variables.clusterID + ' may only write its own clusters and endpoints \
             (spec.cluster_id ' + variables.clusterID + ', named ' + variables.clusterID + ' or ' + \
             variables.clusterID + '-*), not ' + {which}.metadata.name"
        )
    };
    let policy = ValidatingAdmissionPolicy {
        metadata: meta(&name, None),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![SUBMARINER_GROUP.into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
                    resources: Some(CLUSTER_WRITABLE.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "joined-cluster-account".into(),
                expression: format!("request.userInfo.username.startsWith('{user_prefix}')"),
            }]),
            variables: Some(vec![Variable {
                name: "clusterID".into(),
                expression: format!("request.userInfo.username.substring({})", user_prefix.len()),
            }]),
            validations: Some(vec![
                Validation {
                    expression: owned("object"),
                    message_expression: Some(message("object")),
                    reason: Some("Forbidden".into()),
                    ..Default::default()
                },
                Validation {
                    expression: owned("oldObject"),
                    message_expression: Some(message("oldObject")),
                    reason: Some("Forbidden".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: meta(&name, None),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(name.clone()),
            validation_actions: Some(vec!["Deny".into()]),
            match_resources: Some(MatchResources {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        namespace.to_string(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    (policy, binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_reads_everything_and_writes_clusters_and_endpoints() {
        let role = cluster_role("east", "broker");
        assert_eq!(role.metadata.name.as_deref(), Some("strait-cluster-east"));
        let rules = role.rules.unwrap();
        let writes: Vec<&PolicyRule> = rules
            .iter()
            .filter(|r| r.verbs.contains(&"create".to_string()))
            .collect();
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0].resources.as_deref(),
            Some(&["clusters".to_string(), "endpoints".to_string()][..])
        );
        let readable: Vec<String> = rules
            .iter()
            .filter(|r| r.verbs.contains(&"watch".to_string()))
            .flat_map(|r| r.resources.clone().unwrap())
            .collect();
        for kind in [
            "clusters",
            "endpoints",
            "gateways",
            "serviceimports",
            "configmaps",
        ] {
            assert!(readable.contains(&kind.to_string()), "{kind}: {readable:?}");
        }
        assert!(!readable.contains(&"secrets".to_string()));
    }

    #[test]
    fn the_policy_matches_only_cluster_accounts_of_its_namespace() {
        let (policy, binding) = ownership_policy("submariner-k8s-broker");
        let spec = policy.spec.unwrap();
        let condition = &spec.match_conditions.unwrap()[0].expression;
        assert_eq!(
            condition,
            "request.userInfo.username.startsWith('system:serviceaccount:submariner-k8s-broker:strait-cluster-')"
        );
        let prefix = "system:serviceaccount:submariner-k8s-broker:strait-cluster-";
        assert_eq!(
            spec.variables.unwrap()[0].expression,
            format!("request.userInfo.username.substring({})", prefix.len())
        );
        let validations = spec.validations.unwrap();
        assert!(validations[0].expression.starts_with("object == null ||"));
        assert!(validations[1]
            .expression
            .starts_with("oldObject == null ||"));
        assert_eq!(
            binding.spec.unwrap().policy_name.as_deref(),
            Some("strait-broker-ownership-submariner-k8s-broker")
        );
    }
}
