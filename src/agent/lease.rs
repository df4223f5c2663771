//! Gateway leader election over a `coordination.k8s.io/v1` Lease, by the
//! rules of client-go's leaderelection: one gateway candidate holds the
//! Lease and is the active gateway, the others are passive.
//!
//! This file is the pure core: [`decide`] takes the observed Lease, our
//! identity, the [`LeaseConfig`] and `now`, and says what to write;
//! [`Leadership::assess`] says whether we lead. Nothing here reads a clock
//! or talks to the API server; [`elector`] does, and holds no rules.
//!
//! The Lease itself is the whole state: what the machine needs to remember
//! between rounds (who holds it, when it was renewed) is what it wrote there.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

pub mod elector;

pub use elector::{LeaderElector, LeaseError};

/// How long a lease lasts and how often it is renewed; client-go's names
/// and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseConfigError {
    #[error("the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({duration:?})")]
    DeadlineNotBeforeExpiry {
        renew_deadline: Duration,
        duration: Duration,
    },
    #[error("the retry period ({retry_period:?}) must be shorter than the renew deadline ({renew_deadline:?})")]
    RetryNotBeforeDeadline {
        retry_period: Duration,
        renew_deadline: Duration,
    },
    #[error("the retry period must be longer than zero")]
    ZeroRetryPeriod,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseConfig {
    /// `duration`: how long others wait after the last renewal before
    /// taking over. `renew_deadline`: how long the holder goes on leading
    /// without a successful renewal. `retry_period`: how often candidates
    /// try and the holder renews. Each must be shorter than the one before,
    /// so that a holder that cannot renew stops leading before anyone else
    /// may start.
    pub fn new(
        duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<LeaseConfig, LeaseConfigError> {
        if renew_deadline >= duration {
            return Err(LeaseConfigError::DeadlineNotBeforeExpiry {
                renew_deadline,
                duration,
            });
        }
        if retry_period >= renew_deadline {
            return Err(LeaseConfigError::RetryNotBeforeDeadline {
                retry_period,
                renew_deadline,
            });
        }
        if retry_period.is_zero() {
            return Err(LeaseConfigError::ZeroRetryPeriod);
        }
        Ok(LeaseConfig {
            duration,
            renew_deadline,
            retry_period,
        })
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    /// `leaseDurationSeconds` holds whole seconds: rounded up, so that
    /// others never wait less than we mean.
    fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.duration.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// The election fields of a Lease's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub acquire_time: Option<SystemTime>,
    pub renew_time: Option<SystemTime>,
    /// `leaseDurationSeconds`.
    pub duration: Option<Duration>,
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn from_spec(spec: &LeaseSpec) -> LeaseRecord {
        LeaseRecord {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0.into()),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.into()),
            duration: spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }

    /// Writes our fields into `spec`, leaving the others (`strategy`,
    /// `preferredHolder`) as they were.
    pub fn write_to(&self, spec: &mut LeaseSpec) {
        spec.holder_identity = self.holder.clone();
        spec.acquire_time = self.acquire_time.map(micro_time);
        spec.renew_time = self.renew_time.map(micro_time);
        spec.lease_duration_seconds = self
            .duration
            .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        spec.lease_transitions = Some(self.transitions);
    }

    fn held_by(&self, identity: &str) -> bool {
        self.holder.as_deref() == Some(identity)
    }

    /// Free: held by nobody, never renewed, or not renewed for its
    /// duration (ours when the holder did not say).
    fn is_free(&self, config: &LeaseConfig, now: SystemTime) -> bool {
        let duration = self.duration.unwrap_or(config.duration);
        match (&self.holder, self.renew_time) {
            (Some(_), Some(renewed)) => renewed + duration < now,
            _ => true,
        }
    }
}

fn micro_time(time: SystemTime) -> MicroTime {
    // Only times before 1970 or after 9999 fail; neither is read from a clock.
    MicroTime(Timestamp::try_from(time).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A Lease as read from the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLease {
    pub record: LeaseRecord,
    /// The version a write must name to succeed (optimistic concurrency).
    pub resource_version: String,
}

impl ObservedLease {
    pub fn from_lease(lease: &Lease) -> ObservedLease {
        ObservedLease {
            record: lease
                .spec
                .as_ref()
                .map(LeaseRecord::from_spec)
                .unwrap_or_default(),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

/// What to write in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// There is no Lease: create it, held by us.
    Create(LeaseRecord),
    /// The Lease is free: take it over.
    Acquire {
        record: LeaseRecord,
        resource_version: String,
    },
    /// The Lease is ours: renew it.
    Renew {
        record: LeaseRecord,
        resource_version: String,
    },
    /// We are shutting down: give the Lease up.
    Release {
        record: LeaseRecord,
        resource_version: String,
    },
    /// Someone else holds the Lease, or (releasing) it is not ours.
    Wait,
}

/// One election round: what to write, given the Lease as observed at `now`.
pub fn decide(
    observed: Option<&ObservedLease>,
    identity: &str,
    config: &LeaseConfig,
    now: SystemTime,
) -> Action {
    let held_from_now = |transitions| LeaseRecord {
        holder: Some(identity.to_string()),
        acquire_time: Some(now),
        renew_time: Some(now),
        duration: Some(config.lease_duration()),
        transitions,
    };
    let Some(observed) = observed else {
        return Action::Create(held_from_now(0));
    };
    let resource_version = observed.resource_version.clone();
    if observed.record.held_by(identity) {
        let record = LeaseRecord {
            renew_time: Some(now),
            acquire_time: observed.record.acquire_time.or(Some(now)),
            duration: Some(config.lease_duration()),
            ..observed.record.clone()
        };
        Action::Renew {
            record,
            resource_version,
        }
    } else if observed.record.is_free(config, now) {
        Action::Acquire {
            record: held_from_now(observed.record.transitions.saturating_add(1)),
            resource_version,
        }
    } else {
        Action::Wait
    }
}

/// Giving the Lease up on a clean shutdown: the holder is cleared so that a
/// successor takes over at once instead of after the duration.
pub fn release(observed: Option<&ObservedLease>, identity: &str, now: SystemTime) -> Action {
    match observed {
        Some(observed) if observed.record.held_by(identity) => Action::Release {
            record: LeaseRecord {
                holder: None,
                renew_time: Some(now),
                ..observed.record.clone()
            },
            resource_version: observed.resource_version.clone(),
        },
        _ => Action::Wait,
    }
}

/// Who the active gateway is, as one candidate sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// We hold the Lease and renewed it within the renew deadline: act as
    /// the active gateway.
    pub leading: bool,
    /// The holder of the Lease while it has not expired.
    pub holder: Option<String>,
}

impl Leadership {
    pub fn assess(
        record: Option<&LeaseRecord>,
        identity: &str,
        config: &LeaseConfig,
        now: SystemTime,
    ) -> Leadership {
        let holder = record
            .filter(|r| !r.is_free(config, now))
            .and_then(|r| r.holder.clone());
        Leadership {
            leading: lead_lapses_at(record, identity, config).is_some_and(|lapse| now < lapse),
            holder,
        }
    }
}

/// When we stop leading unless we renew before: our last renewal plus the
/// renew deadline; `None` when the Lease is not ours.
pub fn lead_lapses_at(
    record: Option<&LeaseRecord>,
    identity: &str,
    config: &LeaseConfig,
) -> Option<SystemTime> {
    let record = record.filter(|r| r.held_by(identity))?;
    Some(record.renew_time? + config.renew_deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const ME: &str = "gw-a";
    const OTHER: &str = "gw-b";

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(millis)
    }

    fn config() -> LeaseConfig {
        LeaseConfig::new(
            Duration::from_secs(15),
            Duration::from_secs(10),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    fn held(holder: Option<&str>, acquired: u64, renewed: u64, transitions: i32) -> ObservedLease {
        ObservedLease {
            record: LeaseRecord {
                holder: holder.map(String::from),
                acquire_time: Some(at(acquired)),
                renew_time: Some(at(renewed)),
                duration: Some(Duration::from_secs(15)),
                transitions,
            },
            resource_version: "41".into(),
        }
    }

    #[test]
    fn no_lease_is_created_held_by_us() {
        assert_eq!(
            decide(None, ME, &config(), at(0)),
            Action::Create(LeaseRecord {
                holder: Some(ME.into()),
                acquire_time: Some(at(0)),
                renew_time: Some(at(0)),
                duration: Some(Duration::from_secs(15)),
                transitions: 0,
            })
        );
        assert_eq!(
            Leadership::assess(None, ME, &config(), at(0)),
            Leadership::default()
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_its_lease_expires() {
        let theirs = held(Some(OTHER), 0, 5_000, 3);
        for now in [5_000, 20_000] {
            assert_eq!(decide(Some(&theirs), ME, &config(), at(now)), Action::Wait);
            assert_eq!(
                Leadership::assess(Some(&theirs.record), ME, &config(), at(now)),
                Leadership {
                    leading: false,
                    holder: Some(OTHER.into())
                }
            );
        }
        // Expired: renewed at 5 s, 15 s long, now 20.001 s.
        assert_eq!(
            decide(Some(&theirs), ME, &config(), at(20_001)),
            Action::Acquire {
                record: LeaseRecord {
                    holder: Some(ME.into()),
                    acquire_time: Some(at(20_001)),
                    renew_time: Some(at(20_001)),
                    duration: Some(Duration::from_secs(15)),
                    transitions: 4,
                },
                resource_version: "41".into(),
            }
        );
        assert_eq!(
            Leadership::assess(Some(&theirs.record), ME, &config(), at(20_001)),
            Leadership::default(),
            "an expired lease has no holder"
        );
    }

    #[test]
    fn the_holders_duration_counts_not_ours() {
        let mut theirs = held(Some(OTHER), 0, 0, 0);
        theirs.record.duration = Some(Duration::from_secs(60));
        assert_eq!(
            decide(Some(&theirs), ME, &config(), at(59_000)),
            Action::Wait
        );
        assert!(matches!(
            decide(Some(&theirs), ME, &config(), at(60_001)),
            Action::Acquire { .. }
        ));
        // A holder that did not say: our duration.
        theirs.record.duration = None;
        assert_eq!(
            decide(Some(&theirs), ME, &config(), at(15_000)),
            Action::Wait
        );
        assert!(matches!(
            decide(Some(&theirs), ME, &config(), at(15_001)),
            Action::Acquire { .. }
        ));
    }

    #[test]
    fn a_lease_held_by_nobody_or_never_renewed_is_taken_at_once() {
        let released = held(None, 0, 1_000, 2);
        let never_renewed = ObservedLease {
            record: LeaseRecord {
                holder: Some(OTHER.into()),
                ..Default::default()
            },
            resource_version: "7".into(),
        };
        for (observed, transitions) in [(released, 3), (never_renewed, 1)] {
            match decide(Some(&observed), ME, &config(), at(1_001)) {
                Action::Acquire {
                    record,
                    resource_version,
                } => {
                    assert_eq!(record.holder.as_deref(), Some(ME));
                    assert_eq!(record.acquire_time, Some(at(1_001)));
                    assert_eq!(record.transitions, transitions);
                    assert_eq!(resource_version, observed.resource_version);
                }
                other => panic!("{observed:?}: expected a takeover, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_empty_holder_from_the_api_is_nobody() {
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(LeaseRecord::from_spec(&spec).holder, None);
    }

    #[test]
    fn our_lease_is_renewed_keeping_acquire_time_and_transitions() {
        let ours = held(Some(ME), 1_000, 3_000, 5);
        assert_eq!(
            decide(Some(&ours), ME, &config(), at(5_000)),
            Action::Renew {
                record: LeaseRecord {
                    renew_time: Some(at(5_000)),
                    ..ours.record.clone()
                },
                resource_version: "41".into(),
            }
        );
        // Even past expiry nobody took it: still ours to renew.
        assert!(matches!(
            decide(Some(&ours), ME, &config(), at(60_000)),
            Action::Renew { .. }
        ));
    }

    #[test]
    fn we_stop_leading_at_the_renew_deadline_before_others_may_take_over() {
        let ours = held(Some(ME), 0, 3_000, 0);
        let assess = |now| Leadership::assess(Some(&ours.record), ME, &config(), at(now));
        assert_eq!(
            lead_lapses_at(Some(&ours.record), ME, &config()),
            Some(at(13_000))
        );
        let leading = Leadership {
            leading: true,
            holder: Some(ME.into()),
        };
        assert_eq!(assess(3_000), leading);
        assert_eq!(assess(12_999), leading);
        // No renewal for the renew deadline: passive, though the lease
        // still names us and nobody may take it yet.
        assert_eq!(
            assess(13_000),
            Leadership {
                leading: false,
                holder: Some(ME.into())
            }
        );
        assert_eq!(
            decide(Some(&ours), OTHER, &config(), at(13_000)),
            Action::Wait
        );
        assert_eq!(assess(18_001), Leadership::default());
        assert_eq!(lead_lapses_at(Some(&ours.record), OTHER, &config()), None);
    }

    #[test]
    fn release_clears_the_holder_of_our_lease_only() {
        let ours = held(Some(ME), 0, 3_000, 2);
        let Action::Release {
            record,
            resource_version,
        } = release(Some(&ours), ME, at(4_000))
        else {
            panic!("our lease must be released");
        };
        assert_eq!(resource_version, "41");
        assert_eq!(record.holder, None);
        assert_eq!(record.renew_time, Some(at(4_000)));
        assert_eq!(record.transitions, 2);
        let released = ObservedLease {
            record,
            resource_version: "42".into(),
        };
        assert_eq!(
            Leadership::assess(Some(&released.record), ME, &config(), at(4_000)),
            Leadership::default()
        );
        // The successor takes over at once: a transition.
        assert!(matches!(
            decide(Some(&released), OTHER, &config(), at(4_001)),
            Action::Acquire { record, .. } if record.transitions == 3
        ));

        assert_eq!(
            release(Some(&held(Some(OTHER), 0, 3_000, 2)), ME, at(4_000)),
            Action::Wait
        );
        assert_eq!(release(None, ME, at(4_000)), Action::Wait);
    }

    #[test]
    fn config_orders_its_periods_and_takes_sub_second_values() {
        let ms = Duration::from_millis;
        assert_eq!(
            LeaseConfig::new(ms(1000), ms(1000), ms(100)),
            Err(LeaseConfigError::DeadlineNotBeforeExpiry {
                renew_deadline: ms(1000),
                duration: ms(1000)
            })
        );
        assert_eq!(
            LeaseConfig::new(ms(1000), ms(500), ms(500)),
            Err(LeaseConfigError::RetryNotBeforeDeadline {
                retry_period: ms(500),
                renew_deadline: ms(500)
            })
        );
        assert_eq!(
            LeaseConfig::new(ms(1000), ms(500), ms(0)),
            Err(LeaseConfigError::ZeroRetryPeriod)
        );
        let short = LeaseConfig::new(ms(1500), ms(800), ms(100)).unwrap();
        assert_eq!(short.lease_duration(), Duration::from_secs(2));
        let shorter = LeaseConfig::new(ms(300), ms(200), ms(50)).unwrap();
        assert_eq!(shorter.lease_duration(), Duration::from_secs(1));
        let default = LeaseConfig::default();
        assert_eq!(
            LeaseConfig::new(
                default.duration(),
                default.renew_deadline(),
                default.retry_period()
            ),
            Ok(default)
        );
    }

    #[test]
    fn records_survive_the_lease_spec_to_the_microsecond() {
        let record = LeaseRecord {
            holder: Some(ME.into()),
            acquire_time: Some(at(1_234)),
            renew_time: Some(at(5_678)),
            duration: Some(Duration::from_secs(15)),
            transitions: 9,
        };
        let mut spec = LeaseSpec {
            strategy: Some("OldestEmulationVersion".into()),
            ..Default::default()
        };
        record.write_to(&mut spec);
        assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["renewTime"], "2027-01-15T08:00:05.678000Z");
        let parsed: LeaseSpec = serde_json::from_value(json).unwrap();
        assert_eq!(LeaseRecord::from_spec(&parsed), record);
    }
}
