//! A TCP echo server and a client that checks the echo byte for byte:
//!
//!   tcp-echo serve ADDR:PORT TAG
//!       prints "listening on ADDR:PORT"; to every connection it first
//!       sends "TAG\n", then echoes what it reads until the client closes
//!       its side (a connection idle for 30 s is dropped).
//!   tcp-echo request ADDR:PORT BYTES TAG [--chunk N] [--rate B] [--timeout S]
//!       connects (5 s), sends BYTES deterministic pseudo-random bytes,
//!       closes its side and checks that the answer is exactly "TAG\n"
//!       followed by those bytes; prints "ok bytes=N tag=TAG ms=T", or
//!       what differs and exits 1. Bounded: 20 s for the whole exchange.
//!       Options: `--chunk N` writes N bytes at a time with TCP_NODELAY
//!       (default 16 KiB, Nagle on); `--rate B` paces the sender to B
//!       bytes per second; `--timeout S` bounds the exchange (and each
//!       read and write) to S seconds instead of 20 (and 10).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::exit;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: tcp-echo serve ADDR:PORT TAG | request ADDR:PORT BYTES TAG [--chunk N] [--rate BYTES_PER_SEC] [--timeout SECS]";
/// The largest request: a sanity bound, not a benchmark.
const MAX_BYTES: usize = 256 << 20;

/// The same bytes for the same length, on both ends of a check.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn serve(addr: SocketAddr, tag: String) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| fail(&format!("bind {addr}: {e}")));
    println!("listening on {addr}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let tag = tag.clone();
        std::thread::spawn(move || {
            let _ = echo(stream, &tag);
        });
    }
}

fn echo(mut stream: TcpStream, tag: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{tag}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown(Shutdown::Write)
}

/// How a request sends (the optional flags after TAG).
struct Sending {
    /// Bytes per write; `Some` also sets TCP_NODELAY.
    chunk: Option<usize>,
    /// Bytes per second, at most.
    rate: Option<u64>,
    /// The whole exchange, and each read and write.
    timeout: Option<Duration>,
}

fn parse_sending(flags: &[String]) -> Sending {
    let mut sending = Sending {
        chunk: None,
        rate: None,
        timeout: None,
    };
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value: u64 = flags
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .unwrap_or_else(|| fail(&format!("{flag} needs a number above 0\n{USAGE}")));
        match flag.as_str() {
            "--chunk" => sending.chunk = Some(value as usize),
            "--rate" => sending.rate = Some(value),
            "--timeout" => sending.timeout = Some(Duration::from_secs(value)),
            _ => fail(USAGE),
        }
    }
    sending
}

fn request(addr: SocketAddr, len: usize, tag: &str, how: &Sending) -> Result<String, String> {
    let started = Instant::now();
    let deadline = started + how.timeout.unwrap_or(Duration::from_secs(20));
    let io_timeout = how.timeout.unwrap_or(Duration::from_secs(10));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(io_timeout))
        .and_then(|_| stream.set_write_timeout(Some(io_timeout)))
        .and_then(|_| stream.set_nodelay(how.chunk.is_some()))
        .map_err(|e| format!("socket options: {e}"))?;
    let sent = payload(len);
    // Write from another thread so that a large payload cannot deadlock
    // against the echo filling our receive buffer.
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("cloning the socket: {e}"))?;
    let to_send = sent.clone();
    let chunk_len = how.chunk.unwrap_or(16 << 10);
    let rate = how.rate;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let begun = Instant::now();
        let mut written = 0u64;
        for chunk in to_send.chunks(chunk_len) {
            if let Some(rate) = rate {
                // Not ahead of `rate` bytes per second since the start.
                let due = Duration::from_secs_f64(written as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            writer
                .write_all(chunk)
                .map_err(|e| format!("sending after {written} bytes: {e}"))?;
            written += chunk.len() as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("closing our side: {e}"))
    });

    let expected: Vec<u8> = [format!("{tag}\n").as_bytes(), &sent].concat();
    let mut got = Vec::with_capacity(expected.len());
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {} of {} bytes",
                got.len(),
                expected.len()
            ));
        }
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("receiving after {} bytes: {e}", got.len()))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > expected.len() {
            break;
        }
    }
    sender
        .join()
        .map_err(|_| "the sender panicked".to_string())??;

    let got_tag_end = got.iter().position(|&b| b == b'\n');
    if let Some(end) = got_tag_end {
        let got_tag = String::from_utf8_lossy(&got[..end]);
        if got_tag != tag {
            return Err(format!("answered by {got_tag:?}, not {tag:?}"));
        }
    }
    if let Some(at) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        return Err(format!(
            "byte {at} differs: sent {:#04x}, got {:#04x}",
            expected[at], got[at]
        ));
    }
    if got.len() != expected.len() {
        return Err(format!(
            "got {} bytes back, expected {}",
            got.len(),
            expected.len()
        ));
    }
    Ok(format!(
        "ok bytes={len} tag={tag} ms={}",
        started.elapsed().as_millis()
    ))
}

fn fail(message: &str) -> ! {
    eprintln!("tcp-echo: {message}");
    exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail(USAGE));
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(addr, args.get(3).cloned().unwrap_or_else(|| fail(USAGE))),
        Some("request") => {
            let len: usize = args
                .get(3)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| fail(USAGE));
            if len > MAX_BYTES {
                fail(&format!("at most {MAX_BYTES} bytes"));
            }
            let tag = args.get(4).unwrap_or_else(|| fail(USAGE));
            let how = parse_sending(&args[5..]);
            match request(addr, len, tag, &how) {
                Ok(report) => println!("{report}"),
                Err(e) => fail(&e),
            }
        }
        _ => fail(USAGE),
    }
}
