//! The listen socket: one dual-stack UDP socket (IPv4 through mapped
//! addresses), or IPv4 only where the host has no IPv6.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers large enough to ride out a burst while a thread is busy.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct Listener {
    socket: UdpSocket,
    dual_stack: bool,
    port: u16,
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
        let port = socket.local_addr()?.port();
        Ok(Listener {
            socket,
            dual_stack,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        let to = match to {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0).into()
            }
            other => other,
        };
        self.socket.send_to(datagram, to)
    }

    /// Receives one datagram; IPv4 senders come back as IPv4 addresses.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (len, from) = self.socket.recv_from(buf)?;
        Ok((len, canonical(from)))
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
