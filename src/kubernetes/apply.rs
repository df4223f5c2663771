//! Server-side apply with Strait's field manager, reporting what changed:
//! what makes `deploy-broker` and `join` safe to run again.

use std::fmt;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{SetupError, FIELD_MANAGER};

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
    apply_as(api, object, &kind).await
}

/// [`apply`] for objects whose kind is not in their type (dynamic ones).
pub async fn apply_as<K>(api: &Api<K>, object: &K, kind: &str) -> Result<(K, Applied), SetupError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let shown = qualified_name(object.meta().namespace.as_deref(), &name);
    let op = format!("applying {kind} {shown}");
    let before = api.get_opt(&name).await.map_err(SetupError::api(&op))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
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
