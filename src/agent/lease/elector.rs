//! The I/O side of the election: a task that reads and writes the Lease,
//! paces the rounds and publishes [`Leadership`]. Every rule is in the
//! parent module; this file only carries out its [`Action`]s.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{
    decide, lead_lapses_at, release, Action, Leadership, LeaseConfig, LeaseRecord, ObservedLease,
};

/// A failing candidate doubles its pause at most this often (and never
/// pauses longer than the lease duration).
const MAX_BACKOFF_DOUBLINGS: u32 = 4;

/// Tries at giving the Lease up when others keep writing it meanwhile.
const RELEASE_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{op} Lease {namespace}/{name}: {source}")]
    Api {
        op: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("Lease {namespace}/{name}: no answer within {after:?}")]
    TimedOut {
        namespace: String,
        name: String,
        after: Duration,
    },
}

/// How a write ended.
enum Written {
    /// Written, or nothing to write.
    Settled,
    /// Someone else wrote first (409): read again before deciding.
    Contended,
}

/// One candidate's election task, run by [`LeaderElector::spawn`].
struct Election {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    config: LeaseConfig,
    /// The Lease as last read or written.
    last: Option<Lease>,
    leadership: watch::Sender<Leadership>,
}

/// A running election. Dropping it stops the election without giving the
/// Lease up: another candidate takes over once it expires.
pub struct LeaderElector {
    release: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl LeaderElector {
    /// Starts electing on Lease `namespace/lease_name` as `identity`. The
    /// receiver holds the current [`Leadership`] (not leading until the
    /// first round says otherwise) and changes on every change of it.
    pub fn spawn(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        config: LeaseConfig,
    ) -> (watch::Receiver<Leadership>, LeaderElector) {
        let (leadership, receiver) = watch::channel(Leadership::default());
        let (release, released) = oneshot::channel();
        let election = Election {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: lease_name.into(),
            identity: identity.into(),
            config,
            last: None,
            leadership,
        };
        let task = tokio::spawn(election.run(released));
        (
            receiver,
            LeaderElector {
                release: Some(release),
                task,
            },
        )
    }

    /// Stops the election and, if the Lease is still ours, empties its
    /// holder so that a successor takes over at once. Leadership is
    /// published as lost before the Lease is written.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            // A task that already ended has nothing to release.
            let _ = release.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "lease election task failed");
        }
    }
}

impl Drop for LeaderElector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Election {
    async fn run(mut self, mut released: oneshot::Receiver<()>) {
        let mut failures = 0;
        loop {
            let now = SystemTime::now();
            self.publish(self.assess(now));
            // A round that hangs must not keep us leading past the deadline.
            let limit = self
                .until_lapse(now)
                .map_or(self.config.renew_deadline(), |left| {
                    left.min(self.config.renew_deadline())
                });
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(limit, self.round()) => outcome,
                _ = &mut released => break,
            };
            let pause = match outcome.unwrap_or_else(|_| Err(self.timed_out(limit))) {
                Ok(Written::Settled) => {
                    failures = 0;
                    self.config.retry_period()
                }
                Ok(Written::Contended) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, identity = %self.identity, "lease election round failed");
                    failures += 1;
                    backoff(&self.config, failures)
                }
            };
            let now = SystemTime::now();
            self.publish(self.assess(now));
            let pause = self.until_lapse(now).map_or(pause, |left| left.min(pause));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut released => break,
            }
        }
        self.give_up().await;
    }

    /// Read, decide, write.
    async fn round(&mut self) -> Result<Written, LeaseError> {
        self.read().await?;
        let action = decide(
            self.observed().as_ref(),
            &self.identity,
            &self.config,
            SystemTime::now(),
        );
        if let Action::Acquire { record, .. } = &action {
            tracing::info!(
                lease = %self.name,
                identity = %self.identity,
                transitions = record.transitions,
                "taking over a free lease"
            );
        }
        self.write(action).await
    }

    async fn give_up(&mut self) {
        // Stop acting as the active gateway before anyone else may start.
        let mut last = self.leadership.borrow().clone();
        last.leading = false;
        self.publish(last);
        for _ in 0..RELEASE_ATTEMPTS {
            let limit = self.config.renew_deadline();
            match tokio::time::timeout(limit, self.try_release()).await {
                Ok(Ok(Written::Settled)) => break,
                Ok(Ok(Written::Contended)) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease not released; it expires on its own");
                    break;
                }
                Err(_) => {
                    tracing::warn!(error = %self.timed_out(limit), "lease not released; it expires on its own");
                    break;
                }
            }
        }
        // Never leading again, whatever the last write left in the Lease.
        let mut after = self.assess(SystemTime::now());
        after.leading = false;
        self.publish(after);
    }

    async fn try_release(&mut self) -> Result<Written, LeaseError> {
        self.read().await?;
        let action = release(self.observed().as_ref(), &self.identity, SystemTime::now());
        self.write(action).await
    }

    async fn read(&mut self) -> Result<(), LeaseError> {
        self.last = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|source| self.api_error("reading", source))?;
        Ok(())
    }

    async fn write(&mut self, action: Action) -> Result<Written, LeaseError> {
        let params = PostParams::default();
        let written = match action {
            Action::Wait => return Ok(Written::Settled),
            Action::Create(record) => self.api.create(&params, &self.lease(&record, None)).await,
            Action::Acquire {
                record,
                resource_version,
            }
            | Action::Renew {
                record,
                resource_version,
            }
            | Action::Release {
                record,
                resource_version,
            } => {
                let lease = self.lease(&record, Some(resource_version));
                self.api.replace(&self.name, &params, &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.last = Some(lease);
                Ok(Written::Settled)
            }
            // Conflict on a replace, AlreadyExists on a create.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Written::Contended),
            Err(source) => Err(self.api_error("writing", source)),
        }
    }

    /// The Lease to write: the one read, so that what others keep in it
    /// (labels, strategy) stays, with our record and the version we read.
    fn lease(&self, record: &LeaseRecord, resource_version: Option<String>) -> Lease {
        let mut lease = self.last.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: None,
        });
        lease.metadata.resource_version = resource_version;
        record.write_to(lease.spec.get_or_insert_with(Default::default));
        lease
    }

    fn observed(&self) -> Option<ObservedLease> {
        self.last.as_ref().map(ObservedLease::from_lease)
    }

    fn assess(&self, now: SystemTime) -> Leadership {
        let observed = self.observed();
        Leadership::assess(
            observed.as_ref().map(|o| &o.record),
            &self.identity,
            &self.config,
            now,
        )
    }

    /// How long we go on leading without another renewal; `None` when we
    /// do not lead.
    fn until_lapse(&self, now: SystemTime) -> Option<Duration> {
        let observed = self.observed();
        let lapse = lead_lapses_at(
            observed.as_ref().map(|o| &o.record),
            &self.identity,
            &self.config,
        )?;
        lapse
            .duration_since(now)
            .ok()
            .filter(|left| !left.is_zero())
    }

    fn publish(&self, leadership: Leadership) {
        self.leadership.send_if_modified(|current| {
            if *current == leadership {
                return false;
            }
            tracing::info!(
                lease = %self.name,
                identity = %self.identity,
                leading = leadership.leading,
                holder = ?leadership.holder,
                "leadership changed"
            );
            *current = leadership;
            true
        });
    }

    fn api_error(&self, op: &'static str, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            op,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    fn timed_out(&self, after: Duration) -> LeaseError {
        LeaseError::TimedOut {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            after,
        }
    }
}

/// The pause after `failures` failed rounds in a row: the retry period,
/// doubled per further failure, at most the lease duration.
fn backoff(config: &LeaseConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
    (config.retry_period() * 2u32.pow(doublings)).min(config.duration())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_lease_duration() {
        let ms = Duration::from_millis;
        let config = LeaseConfig::new(ms(3000), ms(2000), ms(250)).unwrap();
        let pauses: Vec<_> = (1..=7).map(|f| backoff(&config, f)).collect();
        assert_eq!(
            pauses,
            [
                ms(250),
                ms(500),
                ms(1000),
                ms(2000),
                ms(3000),
                ms(3000),
                ms(3000)
            ]
        );
    }
}
