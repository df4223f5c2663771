//! The userspace WireGuard engine: a TUN device, a UDP socket and
//! boringtun's protocol core, configured through the cross-platform UAPI.
//! Knows nothing of brokers or Kubernetes.

pub mod allowed_ips;
pub mod config;
pub mod device;
pub mod key;
pub mod offload;
pub mod packet;
pub mod peer;
mod sys;
pub mod uapi;
pub mod uapi_socket;
pub mod udp;

pub use device::{Device, DeviceError};
pub use key::Key;
pub use uapi_socket::UapiSocket;
