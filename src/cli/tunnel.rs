//! `strait tunnel IFNAME [--foreground]`: the engine as a standalone
//! device, like wireguard-go.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::tunnel::uapi_socket::{self, UapiSocket};
use crate::tunnel::Device;

#[derive(Debug, Clone, Args)]
pub struct TunnelArgs {
    /// Name of the TUN interface to create.
    pub ifname: String,
    /// Stay in the foreground instead of detaching.
    #[arg(short, long)]
    pub foreground: bool,
    /// Directory of the UAPI socket IFNAME.sock.
    #[arg(long, default_value = uapi_socket::DEFAULT_DIR)]
    pub uapi_dir: PathBuf,
}

/// How long a detaching parent waits for its child to come up.
const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: TunnelArgs) -> anyhow::Result<()> {
    if args.foreground {
        run_foreground(&args)
    } else {
        detach(&args)
    }
}

fn run_foreground(args: &TunnelArgs) -> anyhow::Result<()> {
    let device = Arc::new(Device::create(&args.ifname)?);
    let socket = UapiSocket::bind(&args.uapi_dir, &args.ifname)?;
    tracing::info!(ifname = %args.ifname, socket = %socket.path().display(), "UAPI listening");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut stopped = device.stopped();
        tokio::select! {
            served = socket.serve(device.clone()) => served.context("UAPI socket failed"),
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
            _ = stopped.wait_for(|stopped| *stopped) => Ok(()),
        }
    });
    device.stop();
    let dropped = device.counters();
    tracing::info!(
        ifname = %args.ifname,
        invalid_datagrams = dropped.invalid_datagrams,
        rejected_datagrams = dropped.rejected_datagrams,
        unknown_peer = dropped.unknown_peer,
        source_rejected = dropped.source_rejected,
        no_route = dropped.no_route,
        no_endpoint = dropped.no_endpoint,
        cookies_sent = dropped.cookies_sent,
        "device stopped"
    );
    drop(socket);
    drop(device);
    outcome
}

/// Starts a foreground copy of this command in its own process group and
/// returns once its UAPI socket answers, or fails as the child failed.
/// Like wireguard-go, the detached device logs nowhere unless RUST_LOG is
/// set; until it is up, its errors come back through a pipe.
fn detach(args: &TunnelArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the strait executable")?;
    let keep_logs = std::env::var_os("RUST_LOG").is_some();
    let mut child = Command::new(exe)
        .arg("tunnel")
        .arg(&args.ifname)
        .arg("--foreground")
        .arg("--uapi-dir")
        .arg(&args.uapi_dir)
        .stdin(Stdio::null())
        .stdout(if keep_logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(if keep_logs {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .process_group(0)
        .spawn()
        .context("starting the detached device")?;
    let startup_errors = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        })
    });
    let socket = uapi_socket::socket_path(&args.uapi_dir, &args.ifname);
    let deadline = Instant::now() + DETACH_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .context("waiting for the detached device")?
        {
            if let Some(errors) = startup_errors {
                eprint!("{}", errors.join().unwrap_or_default());
            }
            std::process::exit(status.code().unwrap_or(1));
        }
        if UnixStream::connect(&socket).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the detached device did not open {} within {DETACH_TIMEOUT:?}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
