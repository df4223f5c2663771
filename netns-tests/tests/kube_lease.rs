//! Gateway leader election on a coordination.k8s.io/v1 Lease of the real
//! kube-apiserver: one candidate leads and the others see it as the holder;
//! a release hands over at once, a vanished leader after its lease expires;
//! candidates racing for a Lease, or a leader cut off from the API server,
//! never leave two leading at once.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use strait::agent::lease::{LeaderElector, Leadership, LeaseConfig, LeaseRecord};
use strait_netns_tests::kube::{create_namespace, ApiServer, ApiServerOptions};
use tokio::sync::watch;

const NAMESPACE: &str = "strait-lease";
const LEASE: &str = "strait-gateway";
const A: &str = "gw-a";
const B: &str = "gw-b";
const C: &str = "gw-c";
/// How often the tests look at the candidates and the Lease.
const POLL: Duration = Duration::from_millis(10);
/// Generous bound on an election settling.
const SETTLE: Duration = Duration::from_secs(30);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// An API server with our namespace in it, and an admin client.
async fn api_server(tag: &str) -> (ApiServer, Client) {
    let api = ApiServer::start_with(ApiServerOptions::default().tag(tag));
    let client = api.client();
    create_namespace(&client, NAMESPACE).await;
    (api, client)
}

fn spawn(client: &Client, lease: &str, identity: &'static str, config: LeaseConfig) -> Candidate {
    let (leadership, elector) =
        LeaderElector::spawn(client.clone(), NAMESPACE, lease, identity, config);
    Candidate {
        identity,
        leadership,
        elector: Some(elector),
    }
}

struct Candidate {
    identity: &'static str,
    leadership: watch::Receiver<Leadership>,
    elector: Option<LeaderElector>,
}

impl Candidate {
    fn now(&self) -> Leadership {
        self.leadership.borrow().clone()
    }
}

/// The candidates as they see it now; panics if two lead at once.
fn sample(candidates: &[&Candidate]) -> Vec<Leadership> {
    let seen: Vec<Leadership> = candidates.iter().map(|c| c.now()).collect();
    let leading = seen.iter().filter(|l| l.leading).count();
    assert!(leading <= 1, "{leading} lead at the same time: {seen:?}");
    seen
}

/// Polls until `check` gives a value, sampling the candidates on every
/// poll (so that two leading at once fails the test whenever it happens).
async fn wait_for<T>(
    what: &str,
    limit: Duration,
    candidates: &[&Candidate],
    mut check: impl FnMut(&[Leadership]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let seen = sample(candidates);
        if let Some(value) = check(&seen) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {limit:?}: {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Which candidate leads, once one does and all name it holder.
async fn settled_leader(candidates: &[&Candidate]) -> &'static str {
    wait_for("settled leader", SETTLE, candidates, |seen| {
        let leader = candidates[seen.iter().position(|l| l.leading)?].identity;
        seen.iter()
            .all(|l| l.holder.as_deref() == Some(leader))
            .then_some(leader)
    })
    .await
}

async fn record(client: &Client, lease: &str) -> LeaseRecord {
    let lease = Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get(lease)
        .await
        .expect("reading the Lease");
    LeaseRecord::from_spec(&lease.spec.expect("a Lease spec"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_the_other_follows_and_a_release_hands_over_at_once() {
    let (_api, client) = api_server("lease-release").await;
    let duration = Duration::from_secs(30);
    let config = LeaseConfig::new(duration, Duration::from_secs(5), ms(200)).unwrap();
    let mut a = spawn(&client, LEASE, A, config);
    let mut b = spawn(&client, LEASE, B, config);

    let leader = settled_leader(&[&a, &b]).await;
    let held = record(&client, LEASE).await;
    assert_eq!(held.holder.as_deref(), Some(leader));
    assert_eq!(held.transitions, 0, "created once, never taken over");
    assert_eq!(held.duration, Some(duration));

    let (going, staying) = match leader {
        A => (&mut a, &b),
        _ => (&mut b, &a),
    };
    let released_at = SystemTime::now();
    going.elector.take().unwrap().release().await;
    assert!(!going.now().leading, "leading after its release");

    // The released one says nothing any more (not leading, no holder).
    let successor = staying.identity;
    assert_eq!(settled_leader(&[staying]).await, successor);
    // Promptly: well within the duration the old lease would have lasted.
    let promptly = duration / 2;
    let taken = record(&client, LEASE).await;
    assert_eq!(taken.holder.as_deref(), Some(successor));
    assert_eq!(taken.transitions, 1);
    let acquired = taken.acquire_time.expect("an acquire time");
    assert!(
        acquired < released_at + promptly,
        "taken over at {acquired:?}, released at {released_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_leader_is_succeeded_once_its_lease_expires() {
    let (_api, client) = api_server("lease-expiry").await;
    // Sub-second renewals; the Lease says 2 s.
    let config = LeaseConfig::new(ms(1500), ms(1000), ms(100)).unwrap();
    let mut a = spawn(&client, LEASE, A, config);
    assert_eq!(settled_leader(&[&a]).await, A);
    let b = spawn(&client, LEASE, B, config);
    assert_eq!(settled_leader(&[&a, &b]).await, A);

    // Stopped without a release, as if its node died; its last word
    // (leading) stays in its receiver, so only gw-b is sampled from now.
    drop(a.elector.take());
    let mut last_held_by_a = None;
    let deadline = Instant::now() + SETTLE;
    while !b.now().leading {
        let seen = record(&client, LEASE).await;
        if seen.holder.as_deref() == Some(A) {
            last_held_by_a = Some(seen);
        }
        assert!(Instant::now() < deadline, "no takeover: {:?}", b.now());
        tokio::time::sleep(POLL).await;
    }
    let before = last_held_by_a.expect("the Lease was seen held by gw-a");
    assert_eq!(before.duration, Some(Duration::from_secs(2)));
    let after = record(&client, LEASE).await;
    assert_eq!(after.holder.as_deref(), Some(B));
    assert_eq!(after.transitions, before.transitions + 1);
    let expired_at = before.renew_time.unwrap() + before.duration.unwrap();
    let acquired = after.acquire_time.unwrap();
    assert!(
        acquired > expired_at,
        "taken over at {acquired:?}, before the lease expired at {expired_at:?}"
    );
    assert_eq!(settled_leader(&[&b]).await, B);
}

/// Samples the candidates while the leader renews the Lease a few times,
/// checking on every poll that it stays the holder after `transitions`.
async fn watch_renewals(
    client: &Client,
    lease: &str,
    candidates: &[&Candidate],
    leader: &str,
    transitions: i32,
    retry: Duration,
) {
    let acquired = record(client, lease).await.acquire_time.unwrap();
    let deadline = Instant::now() + SETTLE;
    loop {
        sample(candidates);
        let seen = record(client, lease).await;
        assert_eq!(seen.holder.as_deref(), Some(leader), "{lease}");
        assert_eq!(seen.transitions, transitions, "{lease}");
        if seen.renew_time.unwrap() > acquired + 5 * retry {
            return;
        }
        assert!(Instant::now() < deadline, "{lease}: no renewals");
        tokio::time::sleep(POLL).await;
    }
}

/// Three candidates race to create each Lease (all but one get
/// AlreadyExists), then the two left race to take it over when the winner
/// releases it (one gets Conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_racing_for_a_lease_never_lead_together() {
    let (_api, client) = api_server("lease-race").await;
    let retry = ms(100);
    let config = LeaseConfig::new(Duration::from_secs(3), Duration::from_secs(2), retry).unwrap();
    for round in 0..5 {
        let lease = format!("race-{round}");
        let mut candidates = [A, B, C].map(|identity| spawn(&client, &lease, identity, config));
        let all: Vec<&Candidate> = candidates.iter().collect();
        let first = settled_leader(&all).await;
        watch_renewals(&client, &lease, &all, first, 0, retry).await;

        let winner = candidates.iter_mut().find(|c| c.identity == first);
        winner.unwrap().elector.take().unwrap().release().await;
        let all: Vec<&Candidate> = candidates.iter().collect();
        let rest: Vec<&Candidate> = candidates.iter().filter(|c| c.identity != first).collect();
        let second = settled_leader(&rest).await;
        watch_renewals(&client, &lease, &all, second, 1, retry).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_stops_leading_before_its_lease_expires() {
    let (mut api, client) = api_server("lease-cut-off").await;
    let config =
        LeaseConfig::new(Duration::from_secs(30), Duration::from_secs(2), ms(200)).unwrap();
    let a = spawn(&client, LEASE, A, config);
    assert_eq!(settled_leader(&[&a]).await, A);

    api.stop();
    let lapsed = wait_for("leadership to lapse", SETTLE, &[&a], |seen| {
        (!seen[0].leading).then(|| seen[0].clone())
    })
    .await;
    // Passive while the Lease, not yet expired, still names it: nobody
    // else could have taken over yet.
    assert_eq!(lapsed.holder.as_deref(), Some(A));

    api.restart();
    assert_eq!(settled_leader(&[&a]).await, A);
    let held = record(&api.client(), LEASE).await;
    assert_eq!(held.holder.as_deref(), Some(A));
    assert_eq!(held.transitions, 0, "renewed, not taken over");
}
