//! The Kubernetes test harness against the real kube-apiserver and etcd
//! (built by tests/kube/build-binaries.sh): several instances at once,
//! objects through kube::Client, authentication and RBAC as a real server
//! does them, clean stops.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use strait_netns_tests::kube::{block_on_in_netns, ApiServer, ApiServerOptions};
use strait_netns_tests::{require_root, unique_id, veth, Netns};

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn config_map(name: &str, key: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..Default::default()
    }
}

/// Creates namespace `ns` and in it ConfigMap `settings` with
/// `owner=value`; returns what the server hands back for the ConfigMap.
async fn create_namespace_and_config_map(client: &Client, ns: &str, value: &str) -> ConfigMap {
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace(ns))
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &config_map("settings", "owner", value),
        )
        .await
        .unwrap_or_else(|e| panic!("creating a ConfigMap in {ns}: {e}"))
}

async fn owner(client: &Client, ns: &str) -> Option<String> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("settings")
        .await
        .unwrap_or_else(|e| panic!("reading the ConfigMap in {ns}: {e}"))
        .data
        .and_then(|d| d.get("owner").cloned())
}

/// The HTTP status of a refused request.
fn status_code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("expected a refusal by the API server, got {other:?}"),
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Starts two instances concurrently.
fn start_two(a: &str, b: &str) -> (ApiServer, ApiServer) {
    std::thread::scope(|s| {
        let a = s.spawn(|| ApiServer::start_with(ApiServerOptions::default().tag(a)));
        let b = s.spawn(|| ApiServer::start_with(ApiServerOptions::default().tag(b)));
        (
            a.join().expect("starting the first API server"),
            b.join().expect("starting the second API server"),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_servers_at_once_each_with_its_own_objects_then_one_stops() {
    let (mut east, west) = start_two("east", "west");
    assert_ne!(east.url(), west.url());
    let (ep, wp) = (east.ports(), west.ports());
    for p in ep.all() {
        assert!(!wp.all().contains(&p), "ports shared: {ep:?} {wp:?}");
    }

    // The same names in both: each server has its own etcd.
    let east_client = east.client();
    let west_client = west.client();
    let made = create_namespace_and_config_map(&east_client, "strait-demo", "east").await;
    assert_eq!(made.metadata.namespace.as_deref(), Some("strait-demo"));
    assert!(made.metadata.resource_version.is_some());
    create_namespace_and_config_map(&west_client, "strait-demo", "west").await;
    assert_eq!(
        owner(&east_client, "strait-demo").await.as_deref(),
        Some("east")
    );
    assert_eq!(
        owner(&west_client, "strait-demo").await.as_deref(),
        Some("west")
    );

    // The kubeconfig file works as it is (what agents will be given).
    let text = std::fs::read_to_string(east.kubeconfig_path()).expect("reading the kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).expect("parsing the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a config from the kubeconfig");
    let from_file = Client::try_from(config).expect("a client from the kubeconfig");
    assert_eq!(
        owner(&from_file, "strait-demo").await.as_deref(),
        Some("east")
    );

    // Without credentials: refused.
    let anonymous = Client::try_from(east.anonymous_config()).expect("an anonymous client");
    let code = status_code(
        Api::<Namespace>::all(anonymous.clone())
            .list(&Default::default())
            .await
            .expect_err("an anonymous list of namespaces must be refused"),
    );
    assert!(code == 401 || code == 403, "anonymous request: HTTP {code}");
    let code = status_code(
        Api::<ConfigMap>::namespaced(anonymous, "strait-demo")
            .create(&PostParams::default(), &config_map("intruder", "k", "v"))
            .await
            .expect_err("an anonymous create must be refused"),
    );
    assert!(code == 401 || code == 403, "anonymous create: HTTP {code}");

    // Stop one: its ports are free, the other serves on.
    east.stop();
    assert!(!east.is_running());
    for port in ep.all() {
        assert!(port_is_free(port), "port {port} still taken after stop");
    }
    assert_eq!(
        owner(&west_client, "strait-demo").await.as_deref(),
        Some("west")
    );
    drop(east);
    drop(west);
    for port in wp.all() {
        assert!(port_is_free(port), "port {port} still taken after drop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_and_service_account_tokens_are_real() {
    let api = ApiServer::start_with(ApiServerOptions::default().tag("rbac"));
    let admin = api.client();
    create_namespace_and_config_map(&admin, "strait-broker", "broker").await;

    // A client certificate from the CA authenticates, and RBAC (no
    // bindings for this user) forbids.
    let alice = Client::try_from(api.user_config("alice", &["strait-testers"])).unwrap();
    let err = Api::<ConfigMap>::namespaced(alice, "strait-broker")
        .get("settings")
        .await
        .expect_err("alice has no role");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("\"alice\""), "{}", s.message);
        }
        other => panic!("unexpected {other:?}"),
    }

    // A service-account token (TokenRequest, signed with the generated
    // key) authenticates as the service account.
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), "strait-broker");
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("cluster-east".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request("cluster-east", &PostParams::default(), &request)
        .await
        .expect("a token request")
        .status
        .expect("a token")
        .token;
    let east = Client::try_from(api.token_config(&token)).unwrap();
    let err = Api::<ConfigMap>::namespaced(east, "strait-broker")
        .get("settings")
        .await
        .expect_err("the service account has no role");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains("system:serviceaccount:strait-broker:cluster-east"),
                "{}",
                s.message
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // A forged token is not authenticated at all.
    let forged = Client::try_from(api.token_config("not-a-token")).unwrap();
    let code = status_code(
        Api::<Namespace>::all(forged)
            .list(&Default::default())
            .await
            .expect_err("a forged token must be refused"),
    );
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_restart_keeps_the_data() {
    let mut api = ApiServer::start_with(ApiServerOptions::default().tag("restart"));
    let client = api.client();
    create_namespace_and_config_map(&client, "strait-kept", "before").await;
    let ports = api.ports();
    api.stop();
    let down = tokio::time::timeout(
        Duration::from_secs(10),
        Api::<Namespace>::all(client.clone()).get("strait-kept"),
    )
    .await;
    assert!(!matches!(down, Ok(Ok(_))), "a stopped API server answered");
    api.restart();
    assert_eq!(api.ports(), ports);
    // A new client: the old one may hold a dead connection for a while.
    let client = api.client();
    assert_eq!(
        owner(&client, "strait-kept").await.as_deref(),
        Some("before")
    );
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn a_panicking_test_leaves_no_process_and_no_directory() {
    let mut seen = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let api = ApiServer::start_with(ApiServerOptions::default().tag("panics"));
        seen = Some((api.pids(), api.dir().to_path_buf(), api.ports()));
        panic!("a deliberate panic, with the API server in scope");
    }));
    assert!(outcome.is_err());
    let (pids, dir, ports) = seen.expect("the API server started");
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} survived the panic");
    }
    assert!(!dir.exists(), "{} survived the panic", dir.display());
    for port in ports.all() {
        assert!(port_is_free(port), "port {port} still taken");
    }
}

#[test]
fn a_server_that_cannot_start_fails_with_its_log() {
    let mut opts = ApiServerOptions::default().tag("badflag");
    opts.extra_args.push("--no-such-flag=1".into());
    let outcome = std::panic::catch_unwind(|| ApiServer::start_with(opts));
    let message = match outcome {
        Ok(_) => panic!("kube-apiserver started with an unknown flag"),
        Err(panic) => panic.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("kube-apiserver exited"), "{message}");
    assert!(message.contains("no-such-flag"), "{message}");
}

/// The API server in one network namespace on a veth address, its client
/// in another: the way the agents of the namespace tests will reach it.
#[test]
fn api_server_in_a_network_namespace() {
    require_root();
    let server_ns = Netns::new("kapi");
    let client_ns = Netns::new("kcli");
    let id = unique_id();
    veth(
        &server_ns,
        &format!("ks{id}"),
        "192.0.2.1/24",
        &client_ns,
        &format!("kc{id}"),
        "192.0.2.2/24",
    );
    let listen = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let api = ApiServer::start_with(
        ApiServerOptions::default()
            .tag("netns")
            .in_netns(server_ns.name(), listen),
    );
    assert_eq!(
        api.url(),
        format!("https://192.0.2.1:{}", api.ports().apiserver)
    );
    let config = api.admin_config();
    let value = block_on_in_netns(client_ns.name(), move || async move {
        let client = Client::try_from(config).expect("a client");
        create_namespace_and_config_map(&client, "strait-netns", "from-client-ns").await;
        owner(&client, "strait-netns").await
    });
    assert_eq!(value.as_deref(), Some("from-client-ns"));
    // Stopped before its namespace goes.
    drop(api);
}
