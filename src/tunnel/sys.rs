//! The system calls std does not wrap: the TUN ioctl, poll on two
//! descriptors, and an eventfd to wake the packet threads. The only module
//! of the crate with `unsafe`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)` from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

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
/// interface.
pub fn open_tun(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
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
    Ok(file)
}

/// Which of the two descriptors handed to [`poll_two`] became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub data: bool,
    pub wake: bool,
}

/// Blocks until `data` is readable (or hung up) or `wake` is signalled.
pub fn poll_two(data: RawFd, wake: RawFd) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: data,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the whole call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(Ready {
                data: fds[0].revents != 0,
                wake: fds[1].revents != 0,
            });
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
