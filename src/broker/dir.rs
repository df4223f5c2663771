//! The embedded directory broker, `dir:PATH`: one YAML file per object
//! under `PATH/<kind plural>/<name>.yaml`, written atomically (temporary
//! file and rename), watched with inotify and re-read on a timer as a
//! safety net. Files that do not parse or claim another owner are skipped
//! and reported, never deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

use super::types::{ClusterSpec, EndpointSpec, GatewayStatus, Kind, Object, Spec, Status};
use super::{Broker, BrokerError, Skipped, Snapshot};

/// Re-read the directory this often even without a notification.
const RESYNC_PERIOD: Duration = Duration::from_secs(10);

pub struct DirBroker {
    root: PathBuf,
    local_cluster: String,
    changes: watch::Sender<u64>,
    _watcher: RecommendedWatcher,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BrokerError + 'a {
    move |source| BrokerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl DirBroker {
    /// Opens (creating if needed) the broker at `root` for `local_cluster`
    /// and starts watching it. Must run inside tokio.
    pub fn open(root: &Path, local_cluster: &str) -> Result<Arc<DirBroker>, BrokerError> {
        for plural in [
            <Spec<ClusterSpec>>::PLURAL,
            <Spec<EndpointSpec>>::PLURAL,
            <Status<GatewayStatus>>::PLURAL,
        ] {
            let dir = root.join(plural);
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        let changes = watch::Sender::new(0u64);
        let notify_tx = changes.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reads (ours included) are reported too; only writes matter.
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    notify_tx.send_modify(|n| *n += 1);
                }
            })
            .map_err(|e| BrokerError::Io {
                op: "watching",
                path: root.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        // Gateways are status reports: nothing a peer plans from, and
        // watching them would wake every agent on every status write.
        for plural in [<Spec<ClusterSpec>>::PLURAL, <Spec<EndpointSpec>>::PLURAL] {
            let dir = root.join(plural);
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| BrokerError::Io {
                    op: "watching",
                    path: dir.clone(),
                    source: std::io::Error::other(e),
                })?;
        }
        let resync_tx = changes.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RESYNC_PERIOD);
            loop {
                ticks.tick().await;
                if resync_tx.is_closed() {
                    return;
                }
                resync_tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Arc::new(DirBroker {
            root: root.to_path_buf(),
            local_cluster: local_cluster.to_string(),
            changes,
            _watcher: watcher,
        }))
    }

    fn path_of<S: Kind>(&self, name: &str) -> PathBuf {
        self.root.join(S::PLURAL).join(format!("{name}.yaml"))
    }
}

/// Everything under a broker directory, without watching it: what
/// `strait show` reads.
pub fn read_snapshot(root: &Path) -> Result<Snapshot, BrokerError> {
    let mut skipped = Vec::new();
    Ok(Snapshot {
        clusters: read_kind(root, &mut skipped)?,
        endpoints: read_kind(root, &mut skipped)?,
        gateways: read_kind(root, &mut skipped)?,
        skipped,
    })
}

/// Reads every object of one kind; the bad ones go to `skipped`.
fn read_kind<S: Kind>(
    root: &Path,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<Object<S>>, BrokerError> {
    let dir = root.join(S::PLURAL);
    let mut objects = Vec::new();
    let mut entries: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(objects),
        Err(e) => return Err(io("listing", &dir)(e)),
    };
    entries.sort();
    for path in entries {
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Temporary files of writers in progress.
        if file.starts_with('.') {
            continue;
        }
        match read_object::<S>(&path) {
            Ok(object) => objects.push(object),
            Err(reason) => skipped.push(Skipped {
                source: path.display().to_string(),
                reason,
            }),
        }
    }
    Ok(objects)
}

/// One object file, or why it cannot be taken.
fn read_object<S: Kind>(path: &Path) -> Result<Object<S>, String> {
    let Some(stem) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".yaml").or_else(|| n.strip_suffix(".json")))
    else {
        return Err("not a .yaml or .json file".into());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("unreadable: {e}"))?;
    // YAML is a superset of JSON: one parser reads both.
    let object: Object<S> = serde_yaml::from_str(&text).map_err(|e| format!("malformed: {e}"))?;
    if object.metadata.name != stem {
        return Err(format!(
            "holds object {:?}, not {stem:?} as its file name says",
            object.metadata.name
        ));
    }
    if let Some(problem) = object.ownership_problem() {
        return Err(format!("foreign-owned: {problem}"));
    }
    Ok(object)
}

impl Broker for DirBroker {
    async fn snapshot(&self) -> Result<Snapshot, BrokerError> {
        read_snapshot(&self.root)
    }

    async fn get<S: Kind + Send>(&self, name: &str) -> Result<Option<Object<S>>, BrokerError> {
        let path = self.path_of::<S>(name);
        Ok(path.exists().then(|| read_object(&path).ok()).flatten())
    }

    async fn publish<S: Kind + Send + Sync>(&self, object: &Object<S>) -> Result<(), BrokerError> {
        let name = &object.metadata.name;
        if object.cluster_id() != self.local_cluster || object.ownership_problem().is_some() {
            return Err(BrokerError::NotOwner {
                local: self.local_cluster.clone(),
                kind: S::KIND,
                name: name.clone(),
                owner: object.cluster_id().to_string(),
            });
        }
        let text = serde_yaml::to_string(object).map_err(|e| BrokerError::Encode {
            kind: S::KIND,
            name: name.clone(),
            message: e.to_string(),
        })?;
        let path = self.path_of::<S>(name);
        // Unchanged objects are not rewritten: watchers would wake for nothing.
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(());
        }
        let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&temp, text).map_err(io("writing", &temp))?;
        std::fs::rename(&temp, &path).map_err(io("renaming into place", &path))
    }

    async fn withdraw<S: Kind>(&self, name: &str) -> Result<(), BrokerError> {
        let path = self.path_of::<S>(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::types::Endpoint;

    fn endpoint(cluster: &str) -> Endpoint {
        let spec = EndpointSpec {
            cluster_id: cluster.into(),
            cable_name: "cable".into(),
            subnets: vec!["10.1.0.0/16".into()],
            ..EndpointSpec::default()
        };
        Endpoint::new(
            spec.object_name(),
            Spec { spec },
            "2026-11-26T00:00:00Z".into(),
        )
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "strait-dir-broker-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn publish_then_read_back_and_withdraw() {
        let root = scratch();
        let broker = DirBroker::open(&root, "east").unwrap();
        let mut changes = broker.changes();
        let object = endpoint("east");
        broker.publish(&object).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("no change notification")
            .unwrap();
        let snapshot = broker.snapshot().await.unwrap();
        assert_eq!(snapshot.endpoints, vec![object.clone()]);
        assert!(snapshot.skipped.is_empty());
        // No temporary file stays behind.
        let files: Vec<_> = std::fs::read_dir(root.join("endpoints")).unwrap().collect();
        assert_eq!(files.len(), 1);
        broker
            .withdraw::<Spec<EndpointSpec>>(&object.metadata.name)
            .await
            .unwrap();
        assert!(broker.snapshot().await.unwrap().endpoints.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn foreign_objects_are_refused_on_write() {
        let root = scratch();
        let broker = DirBroker::open(&root, "east").unwrap();
        let err = broker.publish(&endpoint("west")).await.unwrap_err();
        assert!(matches!(err, BrokerError::NotOwner { .. }), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn bad_files_are_skipped_with_a_reason_and_kept() {
        let root = scratch();
        let broker = DirBroker::open(&root, "east").unwrap();
        broker.publish(&endpoint("east")).await.unwrap();
        let dir = root.join("endpoints");
        std::fs::write(dir.join("garbage.yaml"), "{ this is: [not yaml").unwrap();
        let mut stolen = endpoint("west");
        stolen.metadata.name = "east-other".into();
        std::fs::write(
            dir.join("east-other.yaml"),
            serde_yaml::to_string(&stolen).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("misnamed.yaml"),
            serde_yaml::to_string(&endpoint("west")).unwrap(),
        )
        .unwrap();
        let snapshot = broker.snapshot().await.unwrap();
        assert_eq!(snapshot.endpoints.len(), 1);
        let reasons: Vec<&str> = snapshot.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("malformed")));
        assert!(reasons.iter().any(|r| r.starts_with("foreign-owned")));
        assert!(reasons.iter().any(|r| r.contains("file name")));
        assert!(dir.join("garbage.yaml").exists(), "a bad file was deleted");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
