//! A real Kubernetes API server for the tests: etcd and kube-apiserver,
//! started the way controller-runtime's envtest starts them, with
//! certificates generated for each instance.
//!
//! ```no_run
//! # async fn demo() {
//! use strait_netns_tests::kube::ApiServer;
//! let api = ApiServer::start();            // 127.0.0.1, free ports
//! let client = api.client();               // admin (system:masters)
//! // ... kube::Api::<Namespace>::all(client) ...
//! # }
//! ```
//!
//! Every [`ApiServer`] has its own ports, data directory, certificates and
//! kubeconfig, so a test can run several at once (a broker and two
//! clusters). Dropping it stops both processes (the ones it started, by pid)
//! and removes its directory, also when the test panics.
//!
//! The binaries come from `$STRAIT_KUBE_BIN`, by default the directory
//! `tests/kube/build-binaries.sh` builds into.
//!
//! The API server either listens on 127.0.0.1 of the test's own network
//! namespace, or, with [`ApiServerOptions::netns`], runs inside a network
//! namespace of the test (through `ip netns exec`) and listens on an address
//! of that namespace, e.g. a bridge the test created, so that agents in other
//! namespaces reach it. etcd always listens on 127.0.0.1 of the namespace the
//! API server runs in (its loopback must be up).

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ::kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use ::kube::core::{ApiResource, GroupVersionKind};
use ::kube::Client;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::cluster::ECHO_PORT;
use crate::globalnet::{probe_counts, rule_counts};
use crate::wait_until;

/// The Kubernetes release `tests/kube/build-binaries.sh` builds.
pub const K8S_VERSION: &str = "v1.34.4";
/// The etcd release `tests/kube/build-binaries.sh` builds.
pub const ETCD_VERSION: &str = "v3.6.16";

/// The directory holding `kube-apiserver` and `etcd`: `$STRAIT_KUBE_BIN`,
/// else where `tests/kube/build-binaries.sh` puts them
/// (`${STRAIT_KUBE_CACHE:-/var/cache/strait-kube}/k8s-…_etcd-…/bin`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STRAIT_KUBE_BIN") {
        return dir.into();
    }
    let cache = std::env::var_os("STRAIT_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/strait-kube"));
    cache
        .join(format!("k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}"))
        .join("bin")
}

/// Paths of both binaries; panics, saying how to build them, when one is
/// missing.
pub fn binaries() -> (PathBuf, PathBuf) {
    let dir = bin_dir();
    let apiserver = dir.join("kube-apiserver");
    let etcd = dir.join("etcd");
    for bin in [&apiserver, &etcd] {
        assert!(
            bin.is_file(),
            "{} is missing: run tests/kube/build-binaries.sh (it builds kube-apiserver {K8S_VERSION} \
             and etcd {ETCD_VERSION} into a cache once), or point STRAIT_KUBE_BIN at a directory \
             holding kube-apiserver and etcd",
            bin.display()
        );
    }
    (apiserver, etcd)
}

/// How to start an [`ApiServer`].
#[derive(Clone, Debug)]
pub struct ApiServerOptions {
    /// A short name for the directory and the logs ("broker", "east").
    pub tag: String,
    /// The address kube-apiserver binds and advertises; it is in the
    /// serving certificate, the kubeconfig and the service-account issuer.
    pub listen: IpAddr,
    /// Run etcd and kube-apiserver inside this network namespace
    /// (`ip netns exec NS …`); `listen` must be one of its addresses.
    pub netns: Option<String>,
    /// `--service-cluster-ip-range` (IPv4); its first address is in the
    /// serving certificate.
    pub service_cidr: String,
    /// How long to wait for `/readyz`.
    pub ready_timeout: Duration,
    /// More kube-apiserver flags (`--flag=value`), appended last.
    pub extra_args: Vec<String>,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            tag: "kube".into(),
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            service_cidr: "10.0.0.0/24".into(),
            ready_timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
        }
    }
}

impl ApiServerOptions {
    pub fn tag(mut self, tag: &str) -> Self {
        self.tag = tag.into();
        self
    }

    /// Listen on `addr` inside the network namespace `netns`.
    pub fn in_netns(mut self, netns: &str, addr: IpAddr) -> Self {
        self.netns = Some(netns.into());
        self.listen = addr;
        self
    }
}

/// The ports of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// kube-apiserver's `--secure-port`, on the listen address.
    pub apiserver: u16,
    /// etcd's client port, on 127.0.0.1.
    pub etcd_client: u16,
    /// etcd's peer port, on 127.0.0.1.
    pub etcd_peer: u16,
}

impl Ports {
    pub fn all(&self) -> [u16; 3] {
        [self.apiserver, self.etcd_client, self.etcd_peer]
    }
}

/// etcd and kube-apiserver of one test, stopped and removed on drop.
pub struct ApiServer {
    opts: ApiServerOptions,
    dir: PathBuf,
    ports: Ports,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

/// The user name of the admin client certificate.
pub const ADMIN_USER: &str = "strait-test-admin";

impl ApiServer {
    /// Starts an API server on 127.0.0.1 with default options.
    pub fn start() -> ApiServer {
        ApiServer::start_with(ApiServerOptions::default())
    }

    /// Starts etcd and kube-apiserver and waits until `/readyz` answers ok;
    /// panics with the end of both logs when they do not come up.
    pub fn start_with(opts: ApiServerOptions) -> ApiServer {
        let (apiserver_bin, etcd_bin) = binaries();
        let dir =
            std::env::temp_dir().join(format!("strait-kube-{}-{}", opts.tag, crate::unique_id()));
        std::fs::create_dir_all(dir.join("pki")).expect("creating the API server directory");
        let pki = Pki::generate(&opts);
        pki.write(&dir.join("pki"));
        let mut server = ApiServer {
            ports: Ports {
                apiserver: 0,
                etcd_client: 0,
                etcd_peer: 0,
            },
            ca_pem: pki.ca.pem(),
            admin_cert_pem: pki.admin_cert_pem.clone(),
            admin_key_pem: pki.admin_key_pem.clone(),
            ca: pki.ca,
            opts,
            dir,
            etcd: None,
            apiserver: None,
        };
        // A port picked as free can be taken before etcd or kube-apiserver
        // binds it: then start again on other ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.ports = Ports {
                apiserver: free_port(server.opts.listen, server.opts.netns.is_some()),
                etcd_client: free_port(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    server.opts.netns.is_some(),
                ),
                etcd_peer: free_port(IpAddr::V4(Ipv4Addr::LOCALHOST), server.opts.netns.is_some()),
            };
            std::fs::write(server.kubeconfig_path(), server.admin_kubeconfig())
                .expect("writing the kubeconfig");
            match server.launch(&apiserver_bin, &etcd_bin) {
                Ok(()) => return server,
                Err(e) if attempt < 3 && e.contains("address already in use") => {
                    server.kill_all();
                    let _ = std::fs::remove_dir_all(server.dir.join("etcd"));
                }
                Err(e) => {
                    server.kill_all();
                    panic!("API server {} did not start: {e}", server.opts.tag);
                }
            }
        }
    }

    /// Starts both processes on this instance's ports and data, then waits
    /// for `/readyz`. Err carries the reason and the logs.
    fn launch(&mut self, apiserver_bin: &Path, etcd_bin: &Path) -> Result<(), String> {
        let p = self.ports;
        let data = self.dir.join("etcd");
        let peer = format!("http://127.0.0.1:{}", p.etcd_peer);
        let client = format!("http://127.0.0.1:{}", p.etcd_client);
        let etcd_args = vec![
            format!("--name={}", self.opts.tag),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}={peer}", self.opts.tag),
            "--initial-cluster-state=new".into(),
            // Test data: durability across a host crash is not needed.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        self.etcd = Some(self.spawn(etcd_bin, &etcd_args, "etcd.log"));

        let pki = self.dir.join("pki");
        let f = |name: &str| pki.join(name).display().to_string();
        let url = self.url();
        let mut args = vec![
            format!("--advertise-address={}", self.opts.listen),
            format!("--bind-address={}", self.opts.listen),
            format!("--secure-port={}", p.apiserver),
            format!("--etcd-servers={client}"),
            format!("--cert-dir={}", pki.display()),
            format!("--tls-cert-file={}", f("serving.crt")),
            format!("--tls-private-key-file={}", f("serving.key")),
            format!("--client-ca-file={}", f("ca.crt")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={url}"),
            format!("--service-account-key-file={}", f("sa.pub")),
            format!("--service-account-signing-key-file={}", f("sa.key")),
            format!("--service-cluster-ip-range={}", self.opts.service_cidr),
            // No controller-manager creates the namespaces' "default"
            // service accounts: pods must be admitted without them (envtest
            // does the same).
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        if self.opts.listen.is_loopback() {
            // The `kubernetes` service cannot have a loopback endpoint: do
            // not try (and log an error every ten seconds).
            args.push("--endpoint-reconciler-type=none".into());
        }
        args.extend(self.opts.extra_args.iter().cloned());
        self.apiserver = Some(self.spawn(apiserver_bin, &args, "kube-apiserver.log"));
        self.wait_ready()
    }

    fn spawn(&self, bin: &Path, args: &[String], log: &str) -> Child {
        let out = File::create(self.dir.join(log)).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log handle");
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                // `ip netns exec` execs the program: the pid stays its own.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    /// Polls `/readyz` (as the admin, from the API server's namespace) until
    /// it answers ok; fails early when a process exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let config = self.admin_config();
        let netns = self.opts.netns.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let prober = {
            let stop = stop.clone();
            std::thread::spawn(move || probe_readyz(config, netns, stop, tx))
        };
        let deadline = Instant::now() + self.opts.ready_timeout;
        let result = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(())) => break Ok(()),
                Ok(Err(e)) => break Err(e),
                Err(mpsc::RecvTimeoutError::Disconnected) => break Err("the prober ended".into()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(name) = self.exited() {
                break Err(format!("{name} exited"));
            }
            if Instant::now() > deadline {
                break Err(format!(
                    "/readyz not ok within {:?}",
                    self.opts.ready_timeout
                ));
            }
        };
        stop.store(true, Ordering::Relaxed);
        let _ = prober.join();
        result.map_err(|e| {
            format!(
                "{e}\n--- etcd.log (end)\n{}\n--- kube-apiserver.log (end)\n{}",
                self.log_tail("etcd.log", 30),
                self.log_tail("kube-apiserver.log", 60)
            )
        })
    }

    /// The name of a process of ours that has exited, if any.
    fn exited(&mut self) -> Option<&'static str> {
        for (name, child) in [
            ("etcd", &mut self.etcd),
            ("kube-apiserver", &mut self.apiserver),
        ] {
            if let Some(c) = child {
                if !matches!(c.try_wait(), Ok(None)) {
                    return Some(name);
                }
            }
        }
        None
    }

    /// The last `lines` lines of one of the logs (`etcd.log`,
    /// `kube-apiserver.log`).
    pub fn log_tail(&self, log: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `https://ADDR:PORT`.
    pub fn url(&self) -> String {
        format!(
            "https://{}",
            SocketAddr::new(self.opts.listen, self.ports.apiserver)
        )
    }

    pub fn listen(&self) -> IpAddr {
        self.opts.listen
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// This instance's directory (certificates, etcd data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the serving and client certificates (PEM); the
    /// API server trusts client certificates it signs.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin's kubeconfig file (user [`ADMIN_USER`] in
    /// `system:masters`, certificates embedded).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The admin's kubeconfig, YAML.
    pub fn admin_kubeconfig(&self) -> String {
        self.kubeconfig_yaml(
            ADMIN_USER,
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                BASE64.encode(&self.admin_cert_pem),
                BASE64.encode(&self.admin_key_pem)
            ),
        )
    }

    /// A kubeconfig, YAML, of a user authenticated by a client certificate
    /// signed by this instance's CA (`groups` become its organizations).
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> String {
        let (cert, key) = self.client_cert(user, groups);
        self.kubeconfig_yaml(
            user,
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                BASE64.encode(cert),
                BASE64.encode(key)
            ),
        )
    }

    /// A kubeconfig, YAML, authenticating with a bearer token (a service
    /// account token from the TokenRequest API, say).
    pub fn token_kubeconfig(&self, user: &str, token: &str) -> String {
        self.kubeconfig_yaml(user, &format!("token: {token}"))
    }

    fn kubeconfig_yaml(&self, user: &str, auth: &str) -> String {
        let name = &self.opts.tag;
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    {auth}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {user}
current-context: {name}
",
            server = self.url(),
            ca = BASE64.encode(&self.ca_pem),
        )
    }

    /// A client certificate and key (PEM) for `user` in `groups`.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("generating a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("signing a client certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// The admin's client configuration.
    pub fn admin_config(&self) -> ::kube::Config {
        self.config_with(|auth| {
            auth.client_certificate_data = Some(BASE64.encode(&self.admin_cert_pem));
            auth.client_key_data = Some(BASE64.encode(&self.admin_key_pem).into());
        })
    }

    /// A configuration for `user` in `groups` (a client certificate).
    pub fn user_config(&self, user: &str, groups: &[&str]) -> ::kube::Config {
        let (cert, key) = self.client_cert(user, groups);
        self.config_with(|auth| {
            auth.client_certificate_data = Some(BASE64.encode(cert));
            auth.client_key_data = Some(BASE64.encode(key).into());
        })
    }

    /// A configuration authenticating with a bearer token.
    pub fn token_config(&self, token: &str) -> ::kube::Config {
        self.config_with(|auth| auth.token = Some(token.to_string().into()))
    }

    /// A configuration with no credentials: requests are anonymous.
    pub fn anonymous_config(&self) -> ::kube::Config {
        self.config_with(|_| {})
    }

    fn config_with(&self, auth: impl FnOnce(&mut ::kube::config::AuthInfo)) -> ::kube::Config {
        let mut config = ::kube::Config::new(self.url().parse().expect("API server URL"));
        config.root_cert = Some(vec![self.ca.der().to_vec()]);
        auth(&mut config.auth_info);
        config
    }

    /// A client of this API server as the admin. Needs a Tokio runtime
    /// (call it from a `#[tokio::test]`). Its connections start from the
    /// test process's network namespace: with [`ApiServerOptions::netns`]
    /// the listen address must be routable from there.
    pub fn client(&self) -> ::kube::Client {
        ::kube::Client::try_from(self.admin_config()).expect("building a kube client")
    }

    /// Stops kube-apiserver and etcd (SIGTERM, then SIGKILL after ten
    /// seconds) and waits for them; the certificates, data and ports stay
    /// this instance's, so [`ApiServer::restart`] brings it back as it was.
    pub fn stop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            if let Some(c) = child.take() {
                terminate(c);
            }
        }
    }

    /// Starts both processes again after [`ApiServer::stop`], on the same
    /// ports, certificates and etcd data, and waits for `/readyz`.
    pub fn restart(&mut self) {
        self.stop();
        let (apiserver_bin, etcd_bin) = binaries();
        if let Err(e) = self.launch(&apiserver_bin, &etcd_bin) {
            self.kill_all();
            panic!("API server {} did not restart: {e}", self.opts.tag);
        }
    }

    /// The pids of kube-apiserver and etcd, while they run.
    pub fn pids(&self) -> Vec<u32> {
        [&self.apiserver, &self.etcd]
            .into_iter()
            .flatten()
            .map(|c| c.id())
            .collect()
    }

    /// Whether both processes are running.
    pub fn is_running(&mut self) -> bool {
        self.etcd.is_some() && self.apiserver.is_some() && self.exited().is_none()
    }

    fn kill_all(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() && self.apiserver.is_some() {
            // Keep a trail for the failing test.
            eprintln!(
                "API server {} at {}: kube-apiserver.log (end):\n{}",
                self.opts.tag,
                self.url(),
                self.log_tail("kube-apiserver.log", 15)
            );
        }
        self.stop();
        if std::env::var_os("STRAIT_KUBE_KEEP").is_some() {
            eprintln!("STRAIT_KUBE_KEEP: kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGTERM, up to ten seconds for the exit, then SIGKILL.
fn terminate(mut child: Child) {
    // SAFETY: kill takes no pointers; the pid is our own child's, not yet
    // reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `f`'s future to completion on a fresh thread that has entered the
/// network namespace `ns`, with a runtime of its own: every socket it opens
/// (a [`::kube::Client`]'s connections) lives in that namespace. For tests
/// whose API server is reachable only from inside their namespaces.
pub fn block_on_in_netns<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        crate::enter_netns(&ns).unwrap_or_else(|e| panic!("{e}"));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(f())
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs on its own thread (entering `netns` when given): GET /readyz every
/// 100 ms until it answers ok or `stop` is set; sends Ok once.
fn probe_readyz(
    config: ::kube::Config,
    netns: Option<String>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Result<(), String>>,
) {
    if let Some(ns) = netns {
        if let Err(e) = crate::enter_netns(&ns) {
            let _ = tx.send(Err(e));
            return;
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = tx.send(Err(format!("tokio runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let client = match ::kube::Client::try_from(config) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(format!("building the probe client: {e}")));
                return;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("a GET request");
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await;
            if let Ok(Ok(body)) = attempt {
                if body.trim() == "ok" {
                    let _ = tx.send(Ok(()));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// A port no instance of this process uses yet, below the kernel's
/// ephemeral range (so no outgoing connection holds it), and free on
/// `addr` when we can check (not in another namespace).
fn free_port(addr: IpAddr, other_netns: bool) -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let port = 20000 + (random_u64() % 12000) as u16;
        if used.contains(&port) {
            continue;
        }
        let probe = if other_netns {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            addr
        };
        if TcpListener::bind(SocketAddr::new(probe, port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port found between 20000 and 32000");
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The certificates and keys of one instance.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    serving_cert_pem: String,
    serving_key_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl Pki {
    fn generate(opts: &ApiServerOptions) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("strait-test-ca-{}", opts.tag));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("self-signing the CA");

        let mut names = vec![
            opts.listen.to_string(),
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ];
        if let Some(ip) = first_service_ip(&opts.service_cidr) {
            names.push(ip.to_string());
        }
        names.dedup();
        let serving_key = KeyPair::generate().expect("serving key");
        let mut params = CertificateParams::new(names).expect("serving certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params
            .signed_by(&serving_key, &ca)
            .expect("signing the serving certificate");

        let admin_key = KeyPair::generate().expect("admin key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("admin params");
        params
            .distinguished_name
            .push(DnType::CommonName, ADMIN_USER);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin = params
            .signed_by(&admin_key, &ca)
            .expect("signing the admin certificate");

        // Service-account tokens are signed with ES256 (P-256).
        let sa = KeyPair::generate().expect("service-account key");
        Pki {
            serving_cert_pem: serving.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            admin_cert_pem: admin.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            sa_key_pem: sa.serialize_pem(),
            sa_pub_pem: sa.public_key_pem(),
            ca,
        }
    }

    fn write(&self, dir: &Path) {
        for (name, pem) in [
            ("ca.crt", self.ca.pem()),
            ("serving.crt", self.serving_cert_pem.clone()),
            ("serving.key", self.serving_key_pem.clone()),
            ("admin.crt", self.admin_cert_pem.clone()),
            ("admin.key", self.admin_key_pem.clone()),
            ("sa.key", self.sa_key_pem.clone()),
            ("sa.pub", self.sa_pub_pem.clone()),
        ] {
            std::fs::write(dir.join(name), pem)
                .unwrap_or_else(|e| panic!("writing {}: {e}", dir.join(name).display()));
        }
    }
}

/// The first host address of an IPv4 CIDR (the `kubernetes` service's).
fn first_service_ip(cidr: &str) -> Option<Ipv4Addr> {
    let (net, _) = cidr.split_once('/')?;
    let net: Ipv4Addr = net.parse().ok()?;
    Some(Ipv4Addr::from(u32::from(net) + 1))
}

/// Applies every CRD Strait generates and waits until the server serves
/// them all (`Established`).
pub async fn install_crds(client: &::kube::Client) {
    use ::kube::api::{Api, Patch, PatchParams};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("strait-netns-tests").force();
    for crd in strait::broker::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for crd in strait::broker::crd::all() {
        let name = crd.metadata.name.unwrap_or_default();
        let established = |c: CustomResourceDefinition| {
            c.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        };
        while !crds.get(&name).await.is_ok_and(established) {
            assert!(Instant::now() < deadline, "CRD {name} never established");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &::kube::Client, name: &str) {
    use ::kube::api::{Api, ObjectMeta, PostParams};
    use k8s_openapi::api::core::v1::Namespace;
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

/// The broker namespace (`strait deploy-broker`'s default, Submariner's).
pub const BROKER_NAMESPACE: &str = "submariner-k8s-broker";
/// Strait's namespace in each cluster (`strait join`'s default): the
/// gateway Lease and the Gateway objects.
pub const STRAIT_NAMESPACE: &str = "strait";
/// The broker API server's address on the WAN bridge of a [`KubeSet`].
pub const BROKER_IP: &str = "198.51.100.250";

/// A `submariner.io/v1` kind.
pub fn submariner_resource(kind: &str, plural: &str) -> ::kube::core::ApiResource {
    use ::kube::core::{ApiResource, GroupVersionKind};
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("submariner.io", "v1", kind), plural)
}

/// The objects of a kind in a namespace; none while the server is away.
pub async fn list(
    client: ::kube::Client,
    namespace: &str,
    resource: ::kube::core::ApiResource,
) -> Vec<::kube::api::DynamicObject> {
    ::kube::Api::<::kube::api::DynamicObject>::namespaced_with(client, namespace, &resource)
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// A client; made inside the runtime that will drive it.
pub fn client_of(config: ::kube::Config) -> ::kube::Client {
    ::kube::Client::try_from(config).expect("building a kube client")
}

/// What a node's kubelet (and a cloud's node controller) registers of
/// it: the LAN address as InternalIP, the WAN address of a
/// gateway-capable node as ExternalIP, its pod subnet as podCIDR, and the
/// gateway label on gateway-capable nodes.
fn node_object(node: &crate::cluster::Node) -> k8s_openapi::api::core::v1::Node {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
    let mut labels = std::collections::BTreeMap::new();
    if node.gateway {
        labels.insert("submariner.io/gateway".to_string(), "true".to_string());
    }
    let address = |type_: &str, ip: Ipv4Addr| NodeAddress {
        type_: type_.into(),
        address: ip.to_string(),
    };
    let mut addresses = vec![address("InternalIP", node.lan_ip)];
    addresses.extend(node.wan_ip.map(|ip| address("ExternalIP", ip)));
    Node {
        metadata: ::kube::api::ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_subnet.clone()),
            pod_cidrs: Some(vec![node.pod_subnet.clone()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(addresses),
            ..Default::default()
        }),
    }
}

/// Creates the Node object, then sets its status (which a create ignores).
async fn register_node(client: ::kube::Client, node: k8s_openapi::api::core::v1::Node) {
    use ::kube::api::{Api, Patch, PatchParams, PostParams};
    let name = node.metadata.name.clone().unwrap_or_default();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    nodes
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
    let status = k8s_openapi::api::core::v1::Node {
        status: node.status,
        ..Default::default()
    };
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("setting the status of Node {name}: {e}"));
}

/// A cluster set whose clusters and broker are real API servers: the
/// broker's on the WAN ([`BROKER_IP`]), each cluster's in its LAN
/// namespace (`172.16.k.250`, its service range the cluster's service
/// CIDR), holding the cluster's nodes as Node objects. Fields drop in
/// order: the API servers before the namespaces they run in.
pub struct KubeSet {
    pub locals: std::collections::BTreeMap<String, ApiServer>,
    pub broker: ApiServer,
    pub set: crate::cluster::ClusterSet,
}

impl KubeSet {
    /// Builds the clusters, starts the broker's API server and one per
    /// cluster and registers the nodes. Nothing else: no CRD, no
    /// namespace, no agent started.
    pub fn build(specs: &[crate::cluster::ClusterSpec], options: crate::Options) -> KubeSet {
        let mut set = crate::cluster::ClusterSet::empty(options);
        for spec in specs {
            set.add_cluster(spec.clone());
        }
        let wan = set.wan();
        wan.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{BROKER_IP}/24"),
            "dev",
            "br0",
        ]);
        let broker = ApiServer::start_with(
            ApiServerOptions::default()
                .tag("broker")
                .in_netns(wan.name(), BROKER_IP.parse().expect("an address")),
        );
        let mut locals = std::collections::BTreeMap::new();
        for spec in specs {
            let cluster = set.cluster(&spec.id);
            let api_ip = format!("172.16.{}.250", spec.index);
            cluster
                .lan()
                .ok(&["ip", "addr", "add", &format!("{api_ip}/24"), "dev", "br0"]);
            let mut opts = ApiServerOptions::default()
                .tag(&spec.id)
                .in_netns(cluster.lan().name(), api_ip.parse().expect("an address"));
            opts.service_cidr = spec.service_cidr.clone();
            let local = ApiServer::start_with(opts);
            let config = local.admin_config();
            let nodes: Vec<_> = cluster.nodes.iter().map(node_object).collect();
            block_on_in_netns(cluster.lan().name(), move || async move {
                let client = client_of(config);
                for node in nodes {
                    register_node(client.clone(), node).await;
                }
            });
            locals.insert(spec.id.clone(), local);
        }
        KubeSet {
            locals,
            broker,
            set,
        }
    }

    /// Runs `f` with an admin client of cluster `id`'s API server.
    pub fn local<T: Send + 'static, Fut: std::future::Future<Output = T>>(
        &self,
        id: &str,
        f: impl FnOnce(::kube::Client) -> Fut + Send + 'static,
    ) -> T {
        let config = self.locals[id].admin_config();
        block_on_in_netns(self.set.cluster(id).lan().name(), move || async move {
            f(client_of(config)).await
        })
    }

    /// Runs `f` with an admin client of the broker's API server.
    pub fn on_broker<T: Send + 'static, Fut: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce(::kube::Client) -> Fut + Send + 'static,
    ) -> T {
        let config = self.broker.admin_config();
        block_on_in_netns(self.set.wan().name(), move || async move {
            f(client_of(config)).await
        })
    }

    /// Cluster `id`'s Gateway objects: (node name, haStatus, connected
    /// remote clusters).
    pub fn gateways(&self, id: &str) -> Vec<(String, String, Vec<String>)> {
        self.local(id, |client| async move {
            list(
                client,
                STRAIT_NAMESPACE,
                submariner_resource("Gateway", "gateways"),
            )
            .await
            .into_iter()
            .map(|g| {
                let status = &g.data["status"];
                let connected = status["connections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["status"] == "connected")
                    .filter_map(|c| c["endpoint"]["cluster_id"].as_str())
                    .map(String::from)
                    .collect();
                (
                    status["localEndpoint"]["hostname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    status["haStatus"].as_str().unwrap_or_default().to_string(),
                    connected,
                )
            })
            .collect()
        })
    }

    /// The node whose Gateway says `active`, once exactly one does and it
    /// is connected to every cluster in `remotes`.
    pub fn wait_active_connected(&self, id: &str, remotes: &[&str], limit: Duration) -> String {
        let mut active = String::new();
        crate::wait_until(
            &format!("one active gateway of {id} connected to {remotes:?}"),
            limit,
            || {
                let gateways = self.gateways(id);
                let actives: Vec<_> = gateways.iter().filter(|g| g.1 == "active").collect();
                match actives.as_slice() {
                    [one] if remotes.iter().all(|r| one.2.iter().any(|c| c == r)) => {
                        active = one.0.clone();
                        true
                    }
                    _ => false,
                }
            },
        );
        active
    }

    /// The holder of cluster `id`'s gateway Lease, if any.
    pub fn lease_holder(&self, id: &str) -> Option<String> {
        use k8s_openapi::api::coordination::v1::Lease;
        self.local(id, |client| async move {
            ::kube::Api::<Lease>::namespaced(client, STRAIT_NAMESPACE)
                .get("strait-gateway")
                .await
                .ok()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty())
        })
    }

    /// Cluster `id`'s Endpoint objects in the broker namespace.
    pub fn broker_endpoint_objects(&self, id: &str) -> Vec<::kube::api::DynamicObject> {
        let id = id.to_string();
        self.on_broker(move |client| async move {
            list(
                client,
                BROKER_NAMESPACE,
                submariner_resource("Endpoint", "endpoints"),
            )
            .await
            .into_iter()
            .filter(|e| e.data["spec"]["cluster_id"] == id.as_str())
            .collect()
        })
    }

    /// The names of cluster `id`'s Endpoint objects in the broker.
    pub fn broker_endpoints(&self, id: &str) -> Vec<String> {
        self.broker_endpoint_objects(id)
            .into_iter()
            .filter_map(|e| e.metadata.name)
            .collect()
    }
}

impl KubeSet {
    /// Globalnet between clusters `east` and `west` of the same CIDRs
    /// (global CIDRs 242.0.0.0/16 and 242.1.0.0/16), their agents running
    /// with an echo server in every pod: one active gateway each, west's
    /// `ServiceExport` of its pod gets a `GlobalIngressIP` and a `Valid`
    /// condition (an export of a missing Service is refused), a
    /// `GlobalEgressIP` in east gets its pool, and east's pod reaches
    /// west's through the ingress IP while west sees only that pool.
    pub fn check_globalnet_exports(&self, limit: Duration) {
        self.wait_active_connected("east", &["west"], limit);
        self.wait_active_connected("west", &["east"], limit);
        let east_pod = self.set.cluster("east").pod(0);
        let west_pod = self.set.cluster("west").pod(0);
        assert_eq!(
            east_pod.ip, west_pod.ip,
            "the clusters' pods share an address"
        );

        let west_ip = west_pod.ip;
        self.local("west", move |client| async move {
            create_namespace(&client, "shop").await;
            serve(
                client.clone(),
                "echo",
                ServiceKind::ClusterIp,
                west_ip,
                ECHO_PORT,
                true,
            )
            .await;
            // An export whose service does not exist.
            export(client, "missing").await;
        });
        let mut at = None;
        wait_until("a global ingress IP for shop/echo", limit, || {
            at = self.local("west", |c| export_state(c, "echo".into())).0;
            at.is_some()
        });
        let at = at.unwrap();
        assert!(
            at.octets()[..2] == [242, 1],
            "{at} is not in west's global CIDR"
        );
        let (ip, valid) = self.local("west", |c| export_state(c, "echo".into()));
        assert_eq!(ip, Some(at));
        assert_eq!(valid.map(|v| v.0).as_deref(), Some("True"));
        wait_until("the missing service's export to be refused", limit, || {
            let (ip, valid) = self.local("west", |c| export_state(c, "missing".into()));
            ip.is_none()
                && valid.is_some_and(|(status, message)| {
                    status == "False" && message.contains("does not exist")
                })
        });

        // East's pod gets a pool of its own (a GlobalEgressIP selecting it),
        // and west's server sees only that pool.
        let east_ip = east_pod.ip;
        self.local("east", move |client| async move {
            create_namespace(&client, "shop").await;
            register_pod(client.clone(), "client", east_ip).await;
            let api: Api<DynamicObject> = Api::namespaced_with(
                client,
                "shop",
                &submariner_resource("GlobalEgressIP", "globalegressips"),
            );
            let request = k8s_openapi::serde_json::json!({
                "apiVersion": "submariner.io/v1", "kind": "GlobalEgressIP",
                "metadata": { "name": "client", "namespace": "shop" },
                "spec": { "numberOfIPs": 2, "podSelector": { "matchLabels": { "app": "client" } } },
            });
            api.patch(
                "client",
                &PatchParams::apply("strait-netns-tests").force(),
                &Patch::Apply(request),
            )
            .await
            .unwrap();
        });
        let mut pool = Vec::new();
        wait_until("east's GlobalEgressIP to get its addresses", limit, || {
            pool = self
                .local("east", |c| egress_status(c, "GlobalEgressIP", "client"))
                .0;
            pool.len() == 2
        });
        assert!(pool.iter().all(|ip| ip.starts_with("242.0.")), "{pool:?}");
        let range = format!("{}-{}", pool[0], pool[1]);
        west_pod.ns.nft(&format!(
            "table ip gn-seen {{ chain input {{ type filter hook input priority 0; policy accept;
                    tcp dport {ECHO_PORT} ip saddr {range} counter comment \"from the pod's pool\"
                    tcp dport {ECHO_PORT} ip saddr != {range} counter comment \"from elsewhere\"
                }}
                }}"
        ));

        // East's pod reaches west's through the ingress IP; the echo says
        // which pod answered, byte for byte.
        wait_until("east to reach west's export", limit, || {
            east_pod
                .tcp_request_at(west_pod, at, 1024, &["--timeout", "2"])
                .is_ok()
        });
        let report = east_pod
            .tcp_request_at(west_pod, at, 256 * 1024, &[])
            .unwrap_or_else(|e| panic!("a request through globalnet failed: {e}"));
        println!("GLOBALNET: {report}");
        let seen = probe_counts(&west_pod.ns, "gn-seen");
        assert!(seen["from the pod's pool"] > 0, "{seen:?}");
        assert_eq!(seen["from elsewhere"], 0, "{seen:?}");
    }

    /// After [`KubeSet::check_globalnet_exports`]: west's cluster pool
    /// follows `cluster-egress.submariner.io` (which its agent makes, with
    /// all eight reserved addresses, and which is then cut to two), a
    /// second ClusterGlobalEgressIP is refused, and an exported headless
    /// Service's pod gets a global IP of its own, which east reaches it at
    /// and which its own traffic to east leaves from.
    pub fn check_cluster_pool_and_headless_export(&self, limit: Duration) {
        const CLUSTER_EGRESS: &str = "cluster-egress.submariner.io";
        let cluster_pool = || {
            self.local("west", |c| {
                egress_status(c, "ClusterGlobalEgressIP", CLUSTER_EGRESS)
            })
        };
        let eight: Vec<String> = (1..=8).map(|i| format!("242.1.0.{i}")).collect();
        wait_until(
            "west's agent to make cluster-egress, all eight addresses",
            limit,
            || cluster_pool().0 == eight,
        );
        let cluster_egress = submariner_resource("ClusterGlobalEgressIP", "clusterglobalegressips");
        let request = |name: &str, count: u32| {
            k8s_openapi::serde_json::json!({
                "apiVersion": "submariner.io/v1", "kind": "ClusterGlobalEgressIP",
                "metadata": { "name": name }, "spec": { "numGlobalIPs": count },
            })
        };
        let (resource, cut, extra) = (
            cluster_egress.clone(),
            request(CLUSTER_EGRESS, 2),
            request("extra", 1),
        );
        self.local("west", move |client| async move {
            apply(client.clone(), resource.clone(), false, cut).await;
            apply(client, resource, false, extra).await;
        });
        wait_until("the cluster pool cut to two", limit, || {
            cluster_pool()
                == (
                    vec!["242.1.0.1".into(), "242.1.0.2".into()],
                    Some(("True".into(), String::new())),
                )
        });
        let gateway = &self.set.cluster("west").gateway().ns;
        wait_until("the gateway to translate to the two", limit, || {
            gateway
                .ok(&["nft", "list", "table", "inet", "strait"])
                .contains("snat ip to 242.1.0.1-242.1.0.2")
        });
        wait_until(
            "a second ClusterGlobalEgressIP to be refused",
            limit,
            || {
                let (ips, condition) = self.local("west", |c| {
                    egress_status(c, "ClusterGlobalEgressIP", "extra")
                });
                ips.is_empty()
                    && condition.is_some_and(|(status, message)| {
                        status == "False" && message.contains(CLUSTER_EGRESS)
                    })
            },
        );

        // West's pod behind an exported headless Service, pod `db-0`.
        let east_pod = self.set.cluster("east").pod(0);
        let west_pod = self.set.cluster("west").pod(0);
        let west_ip = west_pod.ip;
        self.local("west", move |client| async move {
            serve(
                client,
                "db",
                ServiceKind::Headless,
                west_ip,
                ECHO_PORT,
                true,
            )
            .await;
        });
        let mut pod_ip = None;
        wait_until("a global IP for headless db's pod", limit, || {
            pod_ip = self.local("west", |c| export_state(c, "pod-db-0".into())).0;
            pod_ip.is_some()
        });
        let pod_ip = pod_ip.unwrap();
        assert!(pod_ip.octets()[..2] == [242, 1], "{pod_ip}");
        let (_, valid) = self.local("west", |c| export_state(c, "db".into()));
        assert_eq!(valid.map(|v| v.0).as_deref(), Some("True"));
        wait_until("east to reach db's pod at its global IP", limit, || {
            east_pod
                .tcp_request_at(west_pod, pod_ip, 1024, &["--timeout", "2"])
                .is_ok()
        });
        // The pod's own traffic to east (a ping of east's gateway at its
        // health-check address) leaves from the pod's global IP.
        let rule = "globalnet egress shop/pod-db-0";
        let before = rule_counts(gateway, "inet", "strait")[rule];
        west_pod
            .ns
            .ok(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "242.0.255.254"]);
        let after = rule_counts(gateway, "inet", "strait")[rule];
        assert!(after > before, "{rule}: {before} then {after} packets");
    }
}

/// Applies `object` (which names itself) as the tests' field manager, in
/// namespace `shop` or, with `namespaced` false, outside namespaces.
async fn apply(
    client: Client,
    resource: ApiResource,
    namespaced: bool,
    object: k8s_openapi::serde_json::Value,
) {
    let name = object["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = match namespaced {
        true => Api::namespaced_with(client, "shop", &resource),
        false => Api::all_with(client, &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply("strait-netns-tests").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

/// A Service as the tests make them: with a ClusterIP, or headless.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    Headless,
}

/// Creates, in namespace `shop` of a cluster's API, Service `name` on
/// `port` with one ready endpoint `pod:port`, pod `<name>-0` (what the
/// endpoints controller would write) and, with `exported`, its
/// ServiceExport.
pub async fn serve(
    client: Client,
    name: &str,
    kind: ServiceKind,
    pod: Ipv4Addr,
    port: u16,
    exported: bool,
) {
    let gvk = |group: &str, version: &str, kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    };
    let mut spec = k8s_openapi::serde_json::json!({ "ports": [{ "name": "echo", "port": port, "targetPort": port }] });
    if kind == ServiceKind::Headless {
        spec["clusterIP"] = "None".into();
    }
    apply(
        client.clone(),
        gvk("", "v1", "Service", "services"),
        true,
        k8s_openapi::serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": spec,
        }),
    )
    .await;
    apply(
        client.clone(),
        gvk("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        true,
        k8s_openapi::serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": format!("{name}-1"), "namespace": "shop",
                          "labels": { "kubernetes.io/service-name": name } },
            "addressType": "IPv4",
            "ports": [{ "name": "echo", "port": port, "protocol": "TCP" }],
            "endpoints": [{ "addresses": [pod.to_string()], "conditions": { "ready": true },
                            "targetRef": { "kind": "Pod", "name": format!("{name}-0"), "namespace": "shop" } }],
        }),
    )
    .await;
    if exported {
        export(client, name).await;
    }
}

/// `status.allocatedIPs` and the first condition (status, message) of
/// egress object `name`: a `GlobalEgressIP` in namespace `shop`, or a
/// `ClusterGlobalEgressIP`.
pub async fn egress_status(
    client: Client,
    kind: &str,
    name: &str,
) -> (Vec<String>, Option<(String, String)>) {
    let resource = submariner_resource(kind, &format!("{}s", kind.to_lowercase()));
    let api: Api<DynamicObject> = match kind {
        "ClusterGlobalEgressIP" => Api::all_with(client, &resource),
        _ => Api::namespaced_with(client, "shop", &resource),
    };
    let Some(object) = api.get_opt(name).await.ok().flatten() else {
        return (Vec::new(), None);
    };
    let status = &object.data["status"];
    let ips = status["allocatedIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.as_str().map(String::from))
        .collect();
    let condition = status["conditions"].get(0).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    });
    (ips, condition)
}

pub async fn export(client: Client, name: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client,
        "shop",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport"),
            "serviceexports",
        ),
    );
    let object = k8s_openapi::serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": { "name": name, "namespace": "shop" },
    });
    api.patch(
        name,
        &PatchParams::apply("strait-netns-tests").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("exporting {name}: {e}"));
}

/// The `GlobalIngressIP` of `shop/name`'s address, and the `Valid`
/// condition of its ServiceExport: (status, message).
pub async fn export_state(
    client: Client,
    name: String,
) -> (Option<Ipv4Addr>, Option<(String, String)>) {
    let get = |resource: ApiResource| {
        let client = client.clone();
        let name = name.clone();
        async move {
            Api::<DynamicObject>::namespaced_with(client, "shop", &resource)
                .get_opt(&name)
                .await
                .ok()
                .flatten()
        }
    };
    let ip = get(submariner_resource("GlobalIngressIP", "globalingressips"))
        .await
        .and_then(|o| {
            o.data["status"]["allocatedIP"]
                .as_str()
                .and_then(|s| s.parse().ok())
        });
    let valid = get(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("multicluster.x-k8s.io", "v1alpha1", "ServiceExport"),
        "serviceexports",
    ))
    .await
    .and_then(|o| {
        o.data["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Valid")
            .map(|c| {
                (
                    c["status"].as_str().unwrap_or_default().to_string(),
                    c["message"].as_str().unwrap_or_default().to_string(),
                )
            })
    });
    (ip, valid)
}

/// Registers a running pod as the kubelet would: its labels (`app`) and
/// its address.
pub async fn register_pod(client: Client, app: &str, ip: Ipv4Addr) {
    let pods: Api<Pod> = Api::namespaced(client, "shop");
    let pod: Pod = k8s_openapi::serde_json::from_value(k8s_openapi::serde_json::json!({
        "metadata": { "name": app, "labels": { "app": app } },
        "spec": { "containers": [{ "name": "main", "image": "example.invalid/none" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = k8s_openapi::serde_json::json!({ "status": { "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] } });
    pods.patch_status(app, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}
