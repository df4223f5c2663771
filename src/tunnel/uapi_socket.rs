//! The UAPI socket, `/var/run/wireguard/IFNAME.sock` by default: the
//! place `wg` looks for a userspace device, speaking the text protocol of
//! [`super::uapi`].

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::device::Device;
use super::uapi::{self, Request};

/// Where wg(8) and wireguard-go keep userspace sockets.
pub const DEFAULT_DIR: &str = "/var/run/wireguard";
/// A request larger than this is refused rather than buffered.
const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("creating UAPI socket directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("UAPI socket {path} is in use: another device named like this one is running")]
    InUse { path: PathBuf },
    #[error("binding UAPI socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

pub fn socket_path(dir: &Path, ifname: &str) -> PathBuf {
    dir.join(format!("{ifname}.sock"))
}

/// The bound socket; dropping it removes the file.
#[derive(Debug)]
pub struct UapiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl UapiSocket {
    /// Binds `DIR/IFNAME.sock`, replacing a stale file that nothing
    /// listens on, as wireguard-go does.
    pub fn bind(dir: &Path, ifname: &str) -> Result<UapiSocket, SocketError> {
        std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = socket_path(dir, ifname);
        let bind_error = |source| SocketError::Bind {
            path: path.clone(),
            source,
        };
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(SocketError::InUse { path });
                }
                std::fs::remove_file(&path).map_err(bind_error)?;
                UnixListener::bind(&path).map_err(bind_error)?
            }
            Err(e) => return Err(bind_error(e)),
        };
        // The socket hands out the private key: owner only.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(UapiSocket { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until the future is dropped. Runs inside tokio.
    pub async fn serve(&self, device: Arc<Device>) -> io::Result<()> {
        let listener = tokio::net::UnixListener::from_std(self.listener.try_clone()?)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let device = device.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, &device).await {
                    tracing::debug!(error = %e, "UAPI connection ended");
                }
            });
        }
    }
}

impl Drop for UapiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection may carry several requests, each ended by a blank line.
async fn serve_connection(stream: tokio::net::UnixStream, device: &Device) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut request = String::new();
    loop {
        let start = request.len();
        let read = reader.read_line(&mut request).await?;
        let line_ended_request = read == 0 || request[start..].trim_end_matches('\n').is_empty();
        if read == 0 && request.trim().is_empty() {
            return Ok(());
        }
        if request.len() > MAX_REQUEST_BYTES {
            write
                .write_all(uapi::serialize_errno(libc::ENOMEM).as_bytes())
                .await?;
            return Ok(());
        }
        if !line_ended_request {
            continue;
        }
        let reply = answer(device, &request);
        write.write_all(reply.as_bytes()).await?;
        if read == 0 {
            return Ok(());
        }
        request.clear();
    }
}

/// The reply to one request: a malformed one gets an errno and changes
/// nothing.
pub fn answer(device: &Device, request: &str) -> String {
    match uapi::parse_request(request) {
        Ok(Request::Get) => uapi::serialize_report(&device.report()),
        Ok(Request::Set(set)) => match device.set(&set) {
            Ok(()) => uapi::SET_OK.to_string(),
            Err(e) => {
                tracing::warn!(ifname = device.name(), error = %e, "UAPI set refused");
                uapi::serialize_errno(e.errno())
            }
        },
        Err(e) => {
            tracing::warn!(ifname = device.name(), error = %e, "malformed UAPI request");
            uapi::serialize_error(&e)
        }
    }
}
