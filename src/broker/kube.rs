//! The `kube` broker backend, `kube:KUBECONFIG`: the broker namespace of a
//! Kubernetes API server (the kubeconfig's context namespace). Watches
//! keep a cache of the cluster set's `Cluster` and `Endpoint` objects, so
//! a silent or unreachable broker leaves the agent with the last state it
//! saw (no tunnel is torn down for it) while the watches retry with
//! backoff and relist when the server returns.
//!
//! `Gateway` objects are status reports of one cluster: like Submariner,
//! they are written to and read from the local cluster (`local`), never
//! the broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::crd::SUBMARINER_GROUP;
use super::types::{ClusterSpec, EndpointSpec, GatewayStatus, Kind, Object, Spec, Status};
use super::{Broker, BrokerError, Skipped, Snapshot};

/// Who Strait's writes are from, for server-side apply.
pub const FIELD_MANAGER: &str = "strait";

/// The objects of one kind as the API server last listed and watched
/// them, by name (or `namespace/name` when watched in every namespace).
pub type Cache = BTreeMap<String, DynamicObject>;

/// A cache kept up to date by a watch, for as long as this lives.
pub struct Watched {
    objects: Arc<RwLock<Cache>>,
    task: JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    /// Starts watching `api`, retrying after errors (the cache keeps the
    /// last state meanwhile); every change of the cache bumps `changes`.
    pub fn start(api: Api<DynamicObject>, target: String, changes: watch::Sender<u64>) -> Watched {
        let objects = Arc::new(RwLock::new(Cache::new()));
        let task = tokio::spawn(watch_into(api, target, objects.clone(), changes));
        Watched { objects, task }
    }

    /// Watches every object of `resource` the client can see: in every
    /// namespace, or cluster-wide for a kind outside namespaces.
    pub fn everywhere(
        client: &Client,
        resource: &ApiResource,
        changes: &watch::Sender<u64>,
    ) -> Watched {
        let target = format!("{} in every namespace", resource.plural);
        Watched::start(
            Api::all_with(client.clone(), resource),
            target,
            changes.clone(),
        )
    }

    /// The objects now.
    pub fn objects(&self) -> parking_lot::RwLockReadGuard<'_, Cache> {
        self.objects.read()
    }
}

/// One side of the broker: a client and the namespace it works in.
#[derive(Clone)]
pub struct Namespace {
    pub client: Client,
    pub name: String,
}

pub struct KubeBroker {
    broker: Namespace,
    local: Namespace,
    local_cluster: String,
    clusters: Watched,
    endpoints: Watched,
    gateways: Watched,
    changes: watch::Sender<u64>,
}

/// A client from a kubeconfig file and the namespace of its context.
pub async fn connect(kubeconfig: &Path) -> Result<Namespace, BrokerError> {
    let problem = |message: String| BrokerError::Kube {
        op: "reading kubeconfig",
        target: kubeconfig.display().to_string(),
        message,
    };
    let file =
        kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| problem(e.to_string()))?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| problem(e.to_string()))?;
    let name = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| problem(e.to_string()))?;
    Ok(Namespace { client, name })
}

/// The API resource of a broker kind (all are `submariner.io/v1`).
fn resource<S: Kind>() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(SUBMARINER_GROUP, "v1", S::KIND),
        S::PLURAL,
    )
}

fn kube_error(op: &'static str, target: String) -> impl FnOnce(kube::Error) -> BrokerError {
    move |e| BrokerError::Kube {
        op,
        target,
        message: e.to_string(),
    }
}

impl KubeBroker {
    /// Starts watching the broker's clusters and endpoints and the local
    /// cluster's gateways. Returns at once: until the first lists arrive
    /// the cache is empty (the agent plans nothing from an empty set, and
    /// keeps what it has).
    pub fn start(broker: Namespace, local: Namespace, local_cluster: &str) -> Arc<KubeBroker> {
        let changes = watch::Sender::new(0u64);
        Arc::new(KubeBroker {
            clusters: watch_kind::<Spec<ClusterSpec>>(&broker, &changes),
            endpoints: watch_kind::<Spec<EndpointSpec>>(&broker, &changes),
            gateways: watch_kind::<Status<GatewayStatus>>(&local, &changes),
            broker,
            local,
            local_cluster: local_cluster.to_string(),
            changes,
        })
    }

    fn watched<S: Kind>(&self) -> &Watched {
        match S::KIND {
            "Cluster" => &self.clusters,
            "Endpoint" => &self.endpoints,
            _ => &self.gateways,
        }
    }

    /// Where objects of kind `S` live.
    fn side<S: Kind>(&self) -> &Namespace {
        match S::KIND {
            "Gateway" => &self.local,
            _ => &self.broker,
        }
    }

    fn api<S: Kind>(&self) -> Api<DynamicObject> {
        let side = self.side::<S>();
        Api::namespaced_with(side.client.clone(), &side.name, &resource::<S>())
    }
}

fn watch_kind<S: Kind>(side: &Namespace, changes: &watch::Sender<u64>) -> Watched {
    let api = Api::namespaced_with(side.client.clone(), &side.name, &resource::<S>());
    let target = format!("{} in namespace {}", S::PLURAL, side.name);
    Watched::start(api, target, changes.clone())
}

/// The cache key of an object: `namespace/name` or, outside namespaces,
/// the name.
fn key_of(object: &DynamicObject) -> String {
    let name = object.metadata.name.clone().unwrap_or_default();
    match &object.metadata.namespace {
        Some(namespace) if namespace.is_empty() => name,
        Some(namespace) => format!("{namespace}/{name}"),
        None => name,
    }
}

async fn watch_into(
    api: Api<DynamicObject>,
    target: String,
    objects: Arc<RwLock<Cache>>,
    changes: watch::Sender<u64>,
) {
    let mut events = watcher::watcher(api, watcher::Config::default())
        .backoff(RetryBackoff::default())
        .boxed();
    let mut listing: Option<Cache> = None;
    let mut failing = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                // Said once per outage, not once per retry.
                if !failing {
                    tracing::warn!(error = %e, "watching {target} failed: keeping the last known objects, retrying");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!("watching {target} again");
            failing = false;
        }
        let changed = apply_event(&mut objects.write(), &mut listing, event);
        if changed {
            changes.send_modify(|n| *n += 1);
        }
    }
}

/// Folds one watch event into the cache; a relist replaces the cache as a
/// whole once complete. Returns whether the cache changed.
fn apply_event(
    cache: &mut Cache,
    listing: &mut Option<Cache>,
    event: Event<DynamicObject>,
) -> bool {
    let name = key_of;
    match event {
        Event::Init => {
            *listing = Some(Cache::new());
            false
        }
        Event::InitApply(object) => {
            listing
                .get_or_insert_with(Cache::new)
                .insert(name(&object), object);
            false
        }
        Event::InitDone => {
            let fresh = listing.take().unwrap_or_default();
            let changed = !same_objects(cache, &fresh);
            *cache = fresh;
            changed
        }
        Event::Apply(object) => {
            let key = name(&object);
            let changed = cache.get(&key).map(|o| &o.data) != Some(&object.data);
            cache.insert(key, object);
            changed
        }
        Event::Delete(object) => cache.remove(&name(&object)).is_some(),
    }
}

fn same_objects(a: &Cache, b: &Cache) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, oa), (kb, ob))| ka == kb && oa.data == ob.data)
}

/// Retries a failed watch after 250 ms, doubling to at most 5 s: a
/// returning broker is noticed within seconds.
struct RetryBackoff {
    next: Duration,
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LONGEST_RETRY: Duration = Duration::from_secs(5);

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff { next: FIRST_RETRY }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(LONGEST_RETRY);
        Some(now)
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// A cached object as a broker object, or why it cannot be taken.
fn decode<S: Kind>(object: &DynamicObject) -> Result<Object<S>, String> {
    let value = serde_json::to_value(object).map_err(|e| format!("unreadable: {e}"))?;
    let decoded: Object<S> =
        serde_json::from_value(value).map_err(|e| format!("malformed: {e}"))?;
    if let Some(problem) = decoded.ownership_problem() {
        return Err(format!("foreign-owned: {problem}"));
    }
    Ok(decoded)
}

fn decode_all<S: Kind>(cache: &Cache, skipped: &mut Vec<Skipped>) -> Vec<Object<S>> {
    cache
        .values()
        .filter_map(|object| {
            let name = object.metadata.name.as_deref().unwrap_or_default();
            decode(object)
                .map_err(|reason| {
                    skipped.push(Skipped {
                        source: format!("{}/{name}", S::PLURAL),
                        reason,
                    })
                })
                .ok()
        })
        .collect()
}

impl Broker for KubeBroker {
    async fn snapshot(&self) -> Result<Snapshot, BrokerError> {
        let mut skipped = Vec::new();
        Ok(Snapshot {
            clusters: decode_all(&self.clusters.objects(), &mut skipped),
            endpoints: decode_all(&self.endpoints.objects(), &mut skipped),
            gateways: decode_all(&self.gateways.objects(), &mut skipped),
            skipped,
        })
    }

    async fn get<S: Kind + Send>(&self, name: &str) -> Result<Option<Object<S>>, BrokerError> {
        let key = format!("{}/{name}", self.side::<S>().name);
        let cached = self.watched::<S>().objects().get(&key).cloned();
        Ok(cached.and_then(|o| decode(&o).ok()))
    }

    async fn publish<S: Kind + Send + Sync>(&self, object: &Object<S>) -> Result<(), BrokerError> {
        let name = object.metadata.name.clone();
        if object.cluster_id() != self.local_cluster || object.ownership_problem().is_some() {
            return Err(BrokerError::NotOwner {
                local: self.local_cluster.clone(),
                kind: S::KIND,
                name,
                owner: object.cluster_id().to_string(),
            });
        }
        // Unchanged objects are not rewritten: every agent would wake.
        if let Ok(Some(current)) = self.get::<S>(&name).await {
            if current.body == object.body && current.metadata.labels == object.metadata.labels {
                return Ok(());
            }
        }
        let mut value = serde_json::to_value(object).map_err(|e| BrokerError::Encode {
            kind: S::KIND,
            name: name.clone(),
            message: e.to_string(),
        })?;
        // The server keeps its own creation time.
        if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("creationTimestamp");
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api::<S>()
            .patch(&name, &params, &Patch::Apply(value))
            .await
            .map_err(kube_error("writing", format!("{} {name}", S::KIND)))?;
        Ok(())
    }

    async fn withdraw<S: Kind>(&self, name: &str) -> Result<(), BrokerError> {
        match self.api::<S>().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(kube_error("removing", format!("{} {name}", S::KIND))(e)),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Everything the broker (and the local cluster's gateways) hold now,
/// listed once without watching: what `strait show` reads.
pub async fn read_snapshot(
    broker: &Namespace,
    local: Option<&Namespace>,
) -> Result<Snapshot, BrokerError> {
    let clusters = list::<Spec<ClusterSpec>>(broker).await?;
    let endpoints = list::<Spec<EndpointSpec>>(broker).await?;
    let gateways = match local {
        Some(local) => list::<Status<GatewayStatus>>(local).await?,
        None => Cache::new(),
    };
    let mut skipped = Vec::new();
    Ok(Snapshot {
        clusters: decode_all(&clusters, &mut skipped),
        endpoints: decode_all(&endpoints, &mut skipped),
        gateways: decode_all(&gateways, &mut skipped),
        skipped,
    })
}

async fn list<S: Kind>(side: &Namespace) -> Result<Cache, BrokerError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(side.client.clone(), &side.name, &resource::<S>());
    let list = api.list(&Default::default()).await.map_err(kube_error(
        "listing",
        format!("{} in namespace {}", S::PLURAL, side.name),
    ))?;
    Ok(list.items.into_iter().map(|o| (key_of(&o), o)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, value: &str) -> DynamicObject {
        let mut o = DynamicObject::new(name, &resource::<Spec<EndpointSpec>>());
        o.data = serde_json::json!({ "spec": { "v": value } });
        o
    }

    #[test]
    fn a_relist_replaces_the_cache_only_when_complete() {
        let mut cache = Cache::new();
        let mut listing = None;
        assert!(apply_event(
            &mut cache,
            &mut listing,
            Event::Apply(object("a", "1"))
        ));
        assert!(!apply_event(
            &mut cache,
            &mut listing,
            Event::Apply(object("a", "1"))
        ));
        assert!(!apply_event(&mut cache, &mut listing, Event::Init));
        assert!(!apply_event(
            &mut cache,
            &mut listing,
            Event::InitApply(object("b", "1"))
        ));
        // Until the relist is done, the old state stands.
        assert!(cache.contains_key("a"));
        assert!(apply_event(&mut cache, &mut listing, Event::InitDone));
        assert_eq!(cache.keys().collect::<Vec<_>>(), ["b"]);
        // The same listing again changes nothing.
        apply_event(&mut cache, &mut listing, Event::Init);
        apply_event(&mut cache, &mut listing, Event::InitApply(object("b", "1")));
        assert!(!apply_event(&mut cache, &mut listing, Event::InitDone));
        assert!(apply_event(
            &mut cache,
            &mut listing,
            Event::Delete(object("b", "1"))
        ));
        assert!(cache.is_empty());
    }

    #[test]
    fn retries_back_off_to_a_ceiling_and_reset() {
        let mut backoff = RetryBackoff::default();
        let delays: Vec<_> = backoff.by_ref().take(7).collect();
        assert_eq!(delays[0], FIRST_RETRY);
        assert_eq!(delays[1], FIRST_RETRY * 2);
        assert_eq!(*delays.last().unwrap(), LONGEST_RETRY);
        backoff.reset();
        assert_eq!(backoff.next(), Some(FIRST_RETRY));
    }

    #[test]
    fn malformed_objects_are_skipped_with_a_reason() {
        let mut cache = Cache::new();
        cache.insert("east-x".into(), object("east-x", "garbage"));
        let mut skipped = Vec::new();
        let endpoints = decode_all::<Spec<EndpointSpec>>(&cache, &mut skipped);
        assert!(endpoints.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].reason.starts_with("malformed"), "{skipped:?}");
        assert_eq!(skipped[0].source, "endpoints/east-x");
    }
}
