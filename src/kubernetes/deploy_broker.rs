//! `deploy-broker`: the broker namespace on one API server, and the
//! broker-info file that lets clusters join it. Safe to run again: objects
//! are applied, and the PSK and globalnet settings, once written, stay.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::Api;

use super::apply::{applied, apply_crds, create_once, Applied};
use super::broker_info::{BrokerAccess, BrokerInfo, PSK_KEY, PSK_SECRET_NAME};
use super::globalnet_info::GlobalnetSettings;
use super::manifests::NAMESPACE_NAME_LABEL;
use super::{connect, rbac, token, SetupError};

/// Submariner's default broker namespace.
pub const DEFAULT_NAMESPACE: &str = "submariner-k8s-broker";
/// Random bytes in a new PSK, as many as Submariner's.
const PSK_RANDOM_BYTES: usize = 48;

#[derive(Debug, Clone)]
pub struct DeployBrokerOptions {
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub globalnet: GlobalnetSettings,
    /// How long the administrator token in the broker-info file lives.
    pub token_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct DeployedBroker {
    pub info: BrokerInfo,
    /// When the administrator token expires (RFC 3339).
    pub token_expires: String,
}

/// Sets the broker up; `report` hears one line per object as it goes.
pub async fn deploy_broker(
    opts: &DeployBrokerOptions,
    report: &mut dyn FnMut(Applied),
) -> Result<DeployedBroker, SetupError> {
    let connection = connect(opts.kubeconfig.as_deref()).await?;
    let client = connection.client;
    let ns = opts.namespace.as_str();

    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            labels: Some([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    report(applied(Api::all(client.clone()), &namespace).await?);
    for crd in apply_crds(&client).await? {
        report(crd);
    }
    let admin = rbac::service_account(rbac::BROKER_ADMIN, ns, Default::default());
    report(applied(Api::namespaced(client.clone(), ns), &admin).await?);
    let role = rbac::admin_role(ns);
    report(applied(Api::namespaced(client.clone(), ns), &role).await?);
    let binding = rbac::role_binding(rbac::BROKER_ADMIN, ns);
    report(applied(Api::namespaced(client.clone(), ns), &binding).await?);
    let (policy, policy_binding) = rbac::ownership_policy(ns);
    report(applied(Api::all(client.clone()), &policy).await?);
    report(applied(Api::all(client.clone()), &policy_binding).await?);

    // Clusters add their global CIDRs to it: created once, never applied.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let (existing, change) = create_once(&config_maps, &opts.globalnet.config_map(ns)).await?;
    if !opts.globalnet.matches(&existing) {
        return Err(SetupError::Refused(format!(
            "ConfigMap {ns}/{} holds other globalnet settings than asked for ({:?}); \
             clusters have joined with them: delete it first to change them",
            super::globalnet_info::NAME,
            existing.data.unwrap_or_default()
        )));
    }
    report(change);

    // Clusters that joined use this PSK: a new one would cut them off.
    let (psk_secret, change) = create_once(
        &Api::<Secret>::namespaced(client.clone(), ns),
        &psk_secret(ns)?,
    )
    .await?;
    report(change);
    let psk = psk_secret
        .data
        .and_then(|d| d.get(PSK_KEY).cloned())
        .map(|b| b.0)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            SetupError::Refused(format!("Secret {ns}/{PSK_SECRET_NAME} has no {PSK_KEY}"))
        })?;

    let admin_token = token::request(&client, ns, rbac::BROKER_ADMIN, opts.token_duration).await?;
    let access = BrokerAccess {
        url: connection.url,
        ca_pem: connection.ca_pem,
        namespace: ns.into(),
        token: admin_token.token,
        psk,
    };
    let info = BrokerInfo::new(
        &access,
        &format!("{}-token", rbac::BROKER_ADMIN),
        opts.globalnet.enabled,
    );
    Ok(DeployedBroker {
        info,
        token_expires: admin_token.expires,
    })
}

/// A new PSK Secret. Submariner writes the random bytes themselves; base64
/// of them is as strong and also works where the PSK is read as text (both
/// tools hash the Secret's bytes as they are).
fn psk_secret(namespace: &str) -> Result<Secret, SetupError> {
    let mut random = [0u8; PSK_RANDOM_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| SetupError::Refused(format!("no random bytes for the PSK: {e}")))?;
    let psk = BASE64.encode(random).into_bytes();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(PSK_SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(PSK_KEY.to_string(), ByteString(psk))].into()),
        ..Default::default()
    })
}
