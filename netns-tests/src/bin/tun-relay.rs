//! The least a userspace tunnel can do, as a yardstick for its latency:
//!
//!   tun-relay IFNAME LISTEN_PORT PEER_ADDR:PORT
//!
//! creates TUN interface IFNAME and relays each packet it reads, as it is,
//! in one UDP datagram to PEER, and each datagram received back onto the
//! TUN. No encryption, no batching, no offloads: one thread waiting in
//! poll(2) on the two descriptors. Whatever a ping through a pair of these
//! costs over the bare link underneath, every userspace tunnel pays too:
//! the same wake-ups, system calls and passes through the kernel's stack.
//! It runs until killed; stop it with SIGTERM.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::exit;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

fn open_tun(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _union_rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // lays out, and `file` is an open /dev/net/tun descriptor.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Blocks until the TUN or the socket has something to read.
fn wait_readable(tun: &File, socket: &UdpSocket) -> io::Result<()> {
    let mut fds = [tun.as_raw_fd(), socket.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `fds` is a live array of two pollfd structs.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn relay(mut tun: File, socket: UdpSocket) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        wait_readable(&tun, &socket)?;
        loop {
            match tun.read(&mut buf) {
                // A send refused (an ICMP error of an earlier one) loses
                // the packet, as a link would.
                Ok(len) => drop(socket.send(&buf[..len])),
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        loop {
            match socket.recv(&mut buf) {
                // A packet the kernel will not take is dropped likewise.
                Ok(len) => drop(tun.write(&buf[..len])),
                Err(e) if would_block(&e) => break,
                // ICMP errors from earlier sends; the socket is still good.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: tun-relay IFNAME LISTEN_PORT PEER_ADDR:PORT");
        exit(2)
    };
    let [name, port, peer] = args.as_slice() else {
        usage()
    };
    let (Ok(port), Ok(peer)) = (port.parse::<u16>(), peer.parse::<SocketAddr>()) else {
        usage()
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        usage()
    }
    let setup = || -> io::Result<(File, UdpSocket)> {
        let tun = open_tun(name)?;
        let socket = UdpSocket::bind(SocketAddr::new(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
            port,
        ))?;
        socket.connect(peer)?;
        socket.set_nonblocking(true)?;
        Ok((tun, socket))
    };
    let result = setup().and_then(|(tun, socket)| relay(tun, socket));
    if let Err(e) = result {
        eprintln!("tun-relay {name}: {e}");
        exit(1);
    }
}
