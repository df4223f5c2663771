//! The system calls std does not wrap: the TUN ioctls, UDP segmentation
//! offload (send and receive), poll on two descriptors, and an eventfd to
//! wake the packet threads. The only module of the crate with `unsafe`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem::{size_of, MaybeUninit};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use socket2::SockAddr;

use super::offload::VNET_HDR_LEN;

/// `_IOW('T', 202, int)` from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`: the header length, set in case a persistent
/// interface was left with another.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Every packet read or written starts with a `struct virtio_net_hdr`.
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
/// From linux/udp.h (libc has them only for some C libraries).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

pub const TUN_PATH: &str = "/dev/net/tun";

/// struct ifreq as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// Opens `/dev/net/tun` and attaches a TUN interface named `name` (created
/// if absent). The descriptor is non-blocking; closing it removes the
/// interface. Packets carry a virtio_net_hdr, and the kernel may hand over
/// TCP (and, from Linux 6.2, UDP) super-packets with checksums left to us.
pub fn open_tun(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
        _union_rest: [0; 22],
    };
    // Callers validate the length; the last byte stays NUL.
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // lays out, and `file` is an open /dev/net/tun descriptor.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let header_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points to `header_len`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &header_len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    // Kernels before 6.2 refuse the USO flags: then TCP offloads only;
    // without any, packets still come whole, behind a header saying so.
    let _ = set_offload(&file, tcp | TUN_F_USO4 | TUN_F_USO6).or_else(|_| set_offload(&file, tcp));
    Ok(file)
}

fn set_offload(tun: &File, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `tun` is open.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to hand over runs of same-sized datagrams of one sender
/// as one buffer (see [`recv_segments`]).
pub fn enable_udp_gro(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a c_int that lives across the call, its size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Control-message room for one `u16`/`int` option, aligned for cmsghdr.
#[repr(C, align(8))]
struct ControlBuffer([u8; 32]);

/// Sends `buf` as datagrams of `segment` bytes each (the last may be
/// shorter) in one call: UDP segmentation offload.
pub fn send_segments(
    socket: &UdpSocket,
    buf: &[u8],
    segment: u16,
    to: SocketAddr,
) -> io::Result<usize> {
    let to = SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = ControlBuffer([0; 32]);
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    assert!(space <= control.0.len());
    // SAFETY: an all-zero msghdr is valid; every pointer set below points
    // to a local that outlives the sendmsg call, with its true length. The
    // first cmsghdr fits in `control` (checked above) and is aligned.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::copy_nonoverlapping(
            segment.to_ne_bytes().as_ptr(),
            libc::CMSG_DATA(cmsg),
            size_of::<u16>(),
        );
        libc::sendmsg(socket.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// What [`recv_segments`] received.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The size of each datagram coalesced into the buffer (the last may
    /// be shorter); `None` for a single datagram.
    pub segment: Option<usize>,
}

/// Receives one datagram, or with UDP GRO on, a run of them back to back.
pub fn recv_segments(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut from = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = ControlBuffer([0; 32]);
    // SAFETY: an all-zero msghdr is valid; its pointers go to locals that
    // outlive the call, with their true lengths.
    let (received, msg) = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = from.as_mut_ptr() as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.0.len() as _;
        (libc::recvmsg(socket.as_raw_fd(), &mut msg, 0), msg)
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut segment = None;
    // SAFETY: the kernel filled `msg_control` with well-formed cmsghdrs up
    // to `msg_controllen`; the CMSG macros walk only within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let mut size: libc::c_int = 0;
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    &mut size as *mut libc::c_int as *mut u8,
                    size_of::<libc::c_int>(),
                );
                segment = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // SAFETY: the kernel wrote an address of `msg_namelen` bytes.
    let from = unsafe { SockAddr::new(from.assume_init(), msg.msg_namelen) };
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    Ok(Received {
        len: received as usize,
        from,
        segment,
    })
}

/// What [`wait`] waits for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

/// Most descriptors [`wait`] takes besides the wake-up.
const MAX_WAIT_FDS: usize = 3;

/// Blocks until one of `fds` is ready as asked (or hung up) or `wake` is
/// signalled; returns whether `wake` was.
pub fn wait(fds: &[(RawFd, Interest)], wake: RawFd) -> io::Result<bool> {
    assert!(fds.len() <= MAX_WAIT_FDS);
    let pollfd = |fd, events| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let mut polled = [pollfd(-1, 0); MAX_WAIT_FDS + 1];
    polled[0] = pollfd(wake, libc::POLLIN);
    for (slot, &(fd, interest)) in polled[1..].iter_mut().zip(fds) {
        let events = match interest {
            Interest::Readable => libc::POLLIN,
            Interest::Writable => libc::POLLOUT,
        };
        *slot = pollfd(fd, events);
    }
    let polled = &mut polled[..fds.len() + 1];
    loop {
        // SAFETY: `polled` is a valid array of pollfd for the whole call.
        let rc = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(polled[0].revents != 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A level-triggered wake-up: once signalled it stays readable, which is
/// what a stop needs (every thread polling it sees it).
#[derive(Debug)]
pub struct Wake(File);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a
        // fresh descriptor that we own from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
        Ok(Wake(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    pub fn signal(&self) {
        // Only fails when the counter would overflow, i.e. it is signalled already.
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
