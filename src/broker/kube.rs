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

/// The objects of one kind as the API server last listed and watched them.
type Cache = BTreeMap<String, DynamicObject>;

#[derive(Default)]
struct Caches {
    clusters: Cache,
    endpoints: Cache,
    gateways: Cache,
}

impl Caches {
    fn of_kind(&mut self, kind: &str) -> &mut Cache {
        match kind {
            "Cluster" => &mut self.clusters,
            "Endpoint" => &mut self.endpoints,
            _ => &mut self.gateways,
        }
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
    caches: Arc<RwLock<Caches>>,
    changes: watch::Sender<u64>,
    watches: Vec<JoinHandle<()>>,
}

impl Drop for KubeBroker {
    fn drop(&mut self) {
        for task in &self.watches {
            task.abort();
        }
    }
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
        let caches = Arc::new(RwLock::new(Caches::default()));
        let changes = watch::Sender::new(0u64);
        let watches = vec![
            spawn_watch::<Spec<ClusterSpec>>(&broker, caches.clone(), changes.clone()),
            spawn_watch::<Spec<EndpointSpec>>(&broker, caches.clone(), changes.clone()),
            spawn_watch::<Status<GatewayStatus>>(&local, caches.clone(), changes.clone()),
        ];
        Arc::new(KubeBroker {
            broker,
            local,
            local_cluster: local_cluster.to_string(),
            caches,
            changes,
            watches,
        })
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

/// Watches one kind for as long as the broker lives, retrying after
/// errors; every change of the cache bumps `changes`.
fn spawn_watch<S: Kind>(
    side: &Namespace,
    caches: Arc<RwLock<Caches>>,
    changes: watch::Sender<u64>,
) -> JoinHandle<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(side.client.clone(), &side.name, &resource::<S>());
    let target = format!("{} in namespace {}", S::PLURAL, side.name);
    tokio::spawn(async move {
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
            let changed = {
                let mut caches = caches.write();
                let cache = caches.of_kind(S::KIND);
                apply_event(cache, &mut listing, event)
            };
            if changed {
                changes.send_modify(|n| *n += 1);
            }
        }
    })
}

/// Folds one watch event into the cache; a relist replaces the cache as a
/// whole once complete. Returns whether the cache changed.
fn apply_event(
    cache: &mut Cache,
    listing: &mut Option<Cache>,
    event: Event<DynamicObject>,
) -> bool {
    let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
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
        .iter()
        .filter_map(|(name, object)| {
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
        let caches = self.caches.read();
        let mut skipped = Vec::new();
        Ok(Snapshot {
            clusters: decode_all(&caches.clusters, &mut skipped),
            endpoints: decode_all(&caches.endpoints, &mut skipped),
            gateways: decode_all(&caches.gateways, &mut skipped),
            skipped,
        })
    }

    async fn get<S: Kind + Send>(&self, name: &str) -> Result<Option<Object<S>>, BrokerError> {
        let cached = self.caches.write().of_kind(S::KIND).get(name).cloned();
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
    let mut caches = Caches::default();
    list_into::<Spec<ClusterSpec>>(broker, &mut caches).await?;
    list_into::<Spec<EndpointSpec>>(broker, &mut caches).await?;
    if let Some(local) = local {
        list_into::<Status<GatewayStatus>>(local, &mut caches).await?;
    }
    let mut skipped = Vec::new();
    Ok(Snapshot {
        clusters: decode_all(&caches.clusters, &mut skipped),
        endpoints: decode_all(&caches.endpoints, &mut skipped),
        gateways: decode_all(&caches.gateways, &mut skipped),
        skipped,
    })
}

async fn list_into<S: Kind>(side: &Namespace, caches: &mut Caches) -> Result<(), BrokerError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(side.client.clone(), &side.name, &resource::<S>());
    let list = api.list(&Default::default()).await.map_err(kube_error(
        "listing",
        format!("{} in namespace {}", S::PLURAL, side.name),
    ))?;
    let cache = caches.of_kind(S::KIND);
    for object in list.items {
        cache.insert(object.metadata.name.clone().unwrap_or_default(), object);
    }
    Ok(())
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
