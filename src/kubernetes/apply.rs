//! Server-side apply with Strait's field manager, reporting what changed:
//! what makes `deploy-broker` and `join` safe to run again.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{SetupError, FIELD_MANAGER};

/// How long a CRD may take to be served.
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Unchanged,
    Updated,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Unchanged => "unchanged",
            Change::Updated => "updated",
        })
    }
}

/// One line of what a command did: `Kind namespace/name: created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub kind: String,
    /// `namespace/name`, or the name of a cluster-scoped object.
    pub name: String,
    pub change: Change,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.kind, self.name, self.change)
    }
}

fn qualified_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Applies `object` (forcing ownership of the fields it sets) and says
/// whether it was created, changed or already so.
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<(K, Applied), SetupError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    apply_as(api, object, &kind, FIELD_MANAGER).await
}

/// [`apply`], saying only what changed.
pub async fn applied<K>(api: Api<K>, object: &K) -> Result<Applied, SetupError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + fmt::Debug,
    K::DynamicType: Default,
{
    Ok(apply(&api, object).await?.1)
}

/// [`apply`] for objects whose kind is not in their type (dynamic ones),
/// as field manager `manager`.
pub async fn apply_as<K>(
    api: &Api<K>,
    object: &K,
    kind: &str,
    manager: &str,
) -> Result<(K, Applied), SetupError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let shown = qualified_name(object.meta().namespace.as_deref(), &name);
    let op = format!("applying {kind} {shown}");
    let before = api.get_opt(&name).await.map_err(SetupError::api(&op))?;
    let params = PatchParams::apply(manager).force();
    let after = api
        .patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(SetupError::api(&op))?;
    let change = match before {
        None => Change::Created,
        Some(b) if b.meta().resource_version == after.meta().resource_version => Change::Unchanged,
        Some(_) => Change::Updated,
    };
    Ok((
        after,
        Applied {
            kind: kind.to_string(),
            name: shown,
            change,
        },
    ))
}

/// Creates `object` unless one of its name exists, which is left as it is
/// (for objects others add to after creation).
pub async fn create_once<K>(api: &Api<K>, object: &K) -> Result<(K, Applied), SetupError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let name = object.meta().name.clone().unwrap_or_default();
    let shown = qualified_name(object.meta().namespace.as_deref(), &name);
    let op = format!("creating {kind} {shown}");
    let (current, change) = match api.get_opt(&name).await.map_err(SetupError::api(&op))? {
        Some(existing) => (existing, Change::Unchanged),
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            let made = api
                .create(&params, object)
                .await
                .map_err(SetupError::api(&op))?;
            (made, Change::Created)
        }
    };
    Ok((
        current,
        Applied {
            kind,
            name: shown,
            change,
        },
    ))
}

/// Applies every CRD of [`crate::broker::crd`] and waits until the API
/// server serves them all.
pub async fn apply_crds(client: &kube::Client) -> Result<Vec<Applied>, SetupError> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let mut applied = Vec::new();
    for crd in crate::broker::crd::all() {
        applied.push(apply(&crds, &crd).await?.1);
    }
    for crd in crate::broker::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(ESTABLISHED_TIMEOUT, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(SetupError::Timeout(format!(
                    "CRD {name} to be established: {e}"
                )))
            }
            Err(_) => return Err(SetupError::Timeout(format!("CRD {name} to be established"))),
        }
    }
    Ok(applied)
}
