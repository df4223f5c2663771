//! Harness for the network-namespace tests: namespaces, veth links and
//! processes that are removed when they go out of scope, also when a test
//! fails. Every address used lives inside namespaces made here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod bench;
pub mod cluster;
pub mod globalnet;
pub mod kube;
pub mod wg;

pub use cluster::{
    Broker, Cluster, ClusterSet, ClusterSpec, Node, NodeSpec, Options, PingRun, Pod,
};

/// A short id unique to this run and call: names of namespaces,
/// interfaces (15 bytes at most) and files are built from it.
pub fn unique_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() & 0xfffff, n)
}

/// Fails the test unless it runs as root: these tests need CAP_NET_ADMIN.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "network-namespace tests need root; run tests/run-all.sh as root"
    );
}

/// The strait binary under test: $STRAIT_BIN, else the workspace's build.
pub fn strait_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("STRAIT_BIN") {
        return bin.into();
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    for profile in ["release", "debug"] {
        let bin = target.join(profile).join("strait");
        if bin.exists() {
            return bin;
        }
    }
    panic!("no strait binary: build it (cargo build --release) or set STRAIT_BIN");
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("strait-test-{tag}-{}", unique_id()));
        std::fs::create_dir_all(&dir).expect("creating scratch directory");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command and returns its output; panics if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace of this test, with its loopback up. Dropping it
/// ends the processes still inside it and deletes it.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("strait-{tag}-{}", unique_id());
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("starting {args:?} in {}: {e}", self.name))
    }

    /// Runs a command in the namespace that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies an nft script (`nft -f -`) in the namespace; it must succeed.
    pub fn nft(&self, script: &str) {
        use std::io::Write;
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nft");
        child
            .stdin
            .take()
            .expect("nft's stdin")
            .write_all(script.as_bytes())
            .expect("writing the nft script");
        let out = child.wait_with_output().expect("waiting for nft");
        assert!(
            out.status.success(),
            "nft -f in {}: {}\n{script}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a long-running process in the namespace, its output going
    /// to `log`.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)], log: &Path) -> Process {
        let out = File::create(log).expect("creating process log");
        let err = out.try_clone().expect("cloning log handle");
        let child = self
            .command(args[0])
            .args(&args[1..])
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?} in {}: {e}", self.name));
        Process {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Whether `ifname` exists in the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.exec(&["ip", "link", "show", "dev", ifname])
            .status
            .success()
    }

    /// Pings `addr` `count` times, 100 ms apart; true when every echo
    /// came back within `deadline_secs`.
    pub fn ping_all(&self, addr: &str, count: u32, deadline_secs: u32) -> bool {
        let out = self.exec(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-w",
            &deadline_secs.to_string(),
            addr,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains(&format!("{count} received"))
    }

    /// Like [`Netns::ping_all`] with the source address `from`, three
    /// echoes within five seconds.
    pub fn ping_all_from(&self, addr: &str, from: &str) -> bool {
        let out = self.exec(&[
            "ping", "-n", "-q", "-c", "3", "-i", "0.1", "-w", "5", "-I", from, addr,
        ]);
        String::from_utf8_lossy(&out.stdout).contains("3 received")
    }

    /// Runs `f` on a thread that entered this namespace: sockets it makes
    /// live here, and processes it starts (nft, say) run here.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter_netns(&self.name).unwrap_or_else(|e| panic!("{e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn pids(&self) -> Vec<i32> {
        let out = run("ip", &["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes inside our own namespace: the test started them.
        for pid in self.pids() {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces, without addresses.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run_ok(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    );
}

/// Moves the calling thread into the network namespace `ns` (a name under
/// /var/run/netns); only that thread changes.
pub fn enter_netns(ns: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let path = Path::new("/var/run/netns").join(ns);
    let file = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: setns takes a valid descriptor we own and a flag; it affects
    // only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Joins two namespaces with a veth pair and addresses both ends.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    veth_pair(a, a_if, b, b_if);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ok(&["ip", "addr", "add", addr, "dev", ifname]);
        ns.ok(&["ip", "link", "set", ifname, "up"]);
    }
}

/// A process a test started; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().map(|s| s.is_some()).unwrap_or(true),
            None => true,
        }
    }

    /// Sends SIGTERM and waits up to five seconds for the exit; returns
    /// whether it exited by itself and its log.
    pub fn terminate(&mut self) -> (bool, String) {
        let Some(mut child) = self.child.take() else {
            return (true, self.log());
        };
        // SAFETY: kill takes no pointers; the pid is our child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut clean = false;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                clean = status.success();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !clean {
            let _ = child.kill();
        }
        let _ = child.wait();
        (clean, self.log())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
