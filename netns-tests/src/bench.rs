//! What the netns benchmark binaries share: their command line, iperf3
//! servers and runs between pods, a TCP connection-rate loop, the host's
//! load and medians.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{wait_until, Netns, Pod, Process};

pub const IPERF_PORT: u16 = 5201;

/// `--seconds N --rounds R --root DIR --journal FILE`.
pub struct BenchArgs {
    pub seconds: u32,
    pub rounds: u32,
    pub root: Option<PathBuf>,
    pub journal: Option<PathBuf>,
}

impl BenchArgs {
    /// Parses the process's arguments; on a bad one prints the usage of
    /// `program` and exits.
    pub fn parse(program: &str) -> BenchArgs {
        let usage = format!(
            "usage: {program} [--seconds 1..120] [--rounds 1..20] [--root DIR] [--journal FILE]"
        );
        let fail = || -> ! {
            eprintln!("{usage}");
            std::process::exit(1)
        };
        let mut parsed = BenchArgs {
            seconds: 5,
            rounds: 3,
            root: None,
            journal: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut flags = args.iter();
        while let Some(flag) = flags.next() {
            let value = flags.next().unwrap_or_else(|| fail());
            let number = || -> u32 { value.parse().unwrap_or_else(|_| fail()) };
            match flag.as_str() {
                "--seconds" if (1..=120).contains(&number()) => parsed.seconds = number(),
                "--rounds" if (1..=20).contains(&number()) => parsed.rounds = number(),
                "--root" => parsed.root = Some(PathBuf::from(value)),
                "--journal" => parsed.journal = Some(PathBuf::from(value)),
                _ => fail(),
            }
        }
        parsed
    }
}

/// `iperf3 -s` on the pod's address, once it listens.
pub fn iperf_server(pod: &Pod, log: &Path) -> Process {
    let server = pod.ns.spawn(
        &[
            "iperf3",
            "-s",
            "-B",
            &pod.ip.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ],
        &[],
        log,
    );
    wait_until(
        &format!("iperf3 -s in {}", pod.tag()),
        Duration::from_secs(10),
        || listening(&pod.ns, IPERF_PORT),
    );
    server
}

fn listening(ns: &Netns, port: u16) -> bool {
    let out = ns.exec(&["ss", "-ltnH", "sport", &format!("= :{port}")]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// One `iperf3 -c` from `from` to `at`: (receiver Mbit/s, sender
/// retransmits).
pub fn iperf(from: &Pod, at: Ipv4Addr, seconds: u32) -> Result<(f64, u64), String> {
    let out = from.exec(&[
        "timeout",
        &(seconds + 20).to_string(),
        "iperf3",
        "-c",
        &at.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &seconds.to_string(),
        "-f",
        "m",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{text}{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // "[  5]   0.00-5.00   sec   300 MBytes   503 Mbits/sec  123   sender"
    let figure = |role: &str| -> Option<(f64, Option<u64>)> {
        let line = text.lines().find(|l| l.trim_end().ends_with(role))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == "Mbits/sec")?;
        let mbits = fields.get(at - 1)?.parse().ok()?;
        let retransmits = fields.get(at + 1).and_then(|r| r.parse().ok());
        Some((mbits, retransmits))
    };
    let (mbits, _) = figure("receiver").ok_or_else(|| format!("no receiver line in:\n{text}"))?;
    let retransmits = figure("sender").and_then(|(_, r)| r).unwrap_or(0);
    Ok((mbits, retransmits))
}

/// TCP connections per second from `from` to `at:port` for `seconds`,
/// over `parallel` connections at a time: each one connects, reads the
/// echo server's tag line, closes its side and reads to the end. Fails on
/// the first connection that does not complete.
pub fn connection_rate(
    from: &Pod,
    at: Ipv4Addr,
    port: u16,
    seconds: u32,
    parallel: usize,
) -> Result<f64, String> {
    // Closed client sockets wait in TIME_WAIT: let new ones reuse ports.
    from.ok(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    let target = SocketAddr::from((at, port));
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let limit = Duration::from_secs(u64::from(seconds));
    from.ns.run_inside(|| {
        let started = Instant::now();
        // Threads made here are in the pod's namespace too.
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..parallel)
                .map(|_| {
                    scope.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            if started.elapsed() >= limit {
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                            if let Err(e) = one_connection(target) {
                                stop.store(true, Ordering::Relaxed);
                                return Err(format!("connection to {target}: {e}"));
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        results.into_iter().collect::<Result<(), String>>()?;
        Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
    })
}

fn one_connection(target: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_nodelay(true)?;
    stream.write_all(b"x")?;
    stream.shutdown(Shutdown::Write)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    if !answer.ends_with(b"\nx") {
        return Err(std::io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&answer)
        )));
    }
    Ok(())
}

/// The 1-minute load average (the machine's, not the namespaces'): other
/// work on the host skews the encrypted path far more than the bare one.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
