//! Moves a file over one TCP connection, bounded in time:
//!
//!   tcp-file receive ADDR:PORT OUT
//!       listens, prints "listening", writes what the first connection
//!       sends to OUT until it closes.
//!   tcp-file send ADDR:PORT IN
//!       connects and sends the file IN.
//!
//! Either gives up (exits non-zero) after IDLE_LIMIT without progress.

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const IDLE_LIMIT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: tcp-file receive ADDR:PORT OUT | send ADDR:PORT IN";
    let (mode, addr, path) = match &args[1..] {
        [mode, addr, path] => (mode.as_str(), addr, path),
        _ => panic!("{usage}"),
    };
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    match mode {
        "receive" => {
            let listener = TcpListener::bind(addr).expect("listening");
            println!("listening");
            io::stdout().flush().unwrap();
            let (mut stream, _) = listener.accept().expect("accepting");
            stream.set_read_timeout(Some(IDLE_LIMIT)).unwrap();
            let mut out = File::create(path).expect("creating the output file");
            let bytes = io::copy(&mut stream, &mut out).expect("receiving");
            println!("received={bytes}");
        }
        "send" => {
            let mut stream = TcpStream::connect_timeout(&addr, IDLE_LIMIT).expect("connecting");
            stream.set_write_timeout(Some(IDLE_LIMIT)).unwrap();
            let mut file = File::open(path).expect("opening the input file");
            let bytes = io::copy(&mut file, &mut stream).expect("sending");
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            println!("sent={bytes}");
        }
        _ => panic!("{usage}"),
    }
}
