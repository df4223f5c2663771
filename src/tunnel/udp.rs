//! The listen socket: one dual-stack UDP socket (IPv4 through mapped
//! addresses), or IPv4 only where the host has no IPv6. It sends and
//! receives runs of same-sized datagrams in one call where the kernel can
//! (UDP GSO and GRO).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, Socket, Type};

use super::sys::{self, Received};

/// Socket buffers large enough to ride out a burst while a thread is busy.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct Listener {
    socket: UdpSocket,
    dual_stack: bool,
    port: u16,
    /// Cleared when the kernel refuses UDP segmentation for our route.
    gso: AtomicBool,
}

impl Listener {
    /// Binds `port` (0 picks a free one) on every address, marking what it
    /// sends with `fwmark` when that is not 0.
    pub fn bind(port: u16, fwmark: u32) -> io::Result<Listener> {
        match Self::bind_family(Domain::IPV6, port, fwmark) {
            Ok(listener) => Ok(listener),
            Err(e) if no_ipv6(&e) => Self::bind_family(Domain::IPV4, port, fwmark),
            Err(e) => Err(e),
        }
    }

    fn bind_family(domain: Domain, port: u16, fwmark: u32) -> io::Result<Listener> {
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        let dual_stack = domain == Domain::IPV6;
        let any: SocketAddr = if dual_stack {
            socket.set_only_v6(false)?;
            (Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, port).into()
        };
        if fwmark != 0 {
            socket.set_mark(fwmark)?;
        }
        // Best effort: the defaults still work, only slower under bursts.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.bind(&any.into())?;
        socket.set_nonblocking(true)?;
        let socket: UdpSocket = socket.into();
        // Without GRO each datagram comes on its own: slower, still right.
        let _ = sys::enable_udp_gro(&socket);
        let port = socket.local_addr()?.port();
        Ok(Listener {
            socket,
            dual_stack,
            port,
            gso: AtomicBool::new(true),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    fn socket_address(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0).into()
            }
            other => other,
        }
    }

    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(datagram, self.socket_address(to))
    }

    /// Sends `datagrams`, laid back to back, each `segment` bytes long but
    /// the last, which may be shorter. Returns how many bytes went out: all
    /// of them, or up to a datagram that the socket could not take yet.
    pub fn send_segments(
        &self,
        datagrams: &[u8],
        segment: usize,
        to: SocketAddr,
    ) -> io::Result<usize> {
        let to = self.socket_address(to);
        if datagrams.len() > segment && self.gso.load(Ordering::Relaxed) {
            match sys::send_segments(&self.socket, datagrams, segment as u16, to) {
                Ok(_) => return Ok(datagrams.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // EIO: the outgoing device cannot checksum for us, for good.
                // Others (a segment above the path MTU): this batch only.
                Err(e) => {
                    if e.raw_os_error() == Some(libc::EIO) {
                        self.gso.store(false, Ordering::Relaxed);
                    }
                    tracing::debug!(error = %e, "UDP segmentation refused, sending one by one");
                }
            }
        }
        let mut sent = 0;
        for datagram in datagrams.chunks(segment) {
            match self.socket.send_to(datagram, to) {
                Ok(_) => sent += datagram.len(),
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Receives a datagram, or a run of same-sized ones from one sender;
    /// IPv4 senders come back as IPv4 addresses.
    pub fn recv_segments(&self, buf: &mut [u8]) -> io::Result<Received> {
        let received = sys::recv_segments(&self.socket, buf)?;
        Ok(Received {
            from: canonical(received.from),
            ..received
        })
    }

    /// Wakes a thread blocked on this socket so it can move to a new one.
    pub fn shutdown(&self) {
        // SHUT_RD on a UDP socket makes pending and future reads return.
        let _ = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Read);
    }
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
