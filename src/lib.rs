//! Strait connects Kubernetes clusters at layer 3 over WireGuard tunnels.

pub mod cli;
pub mod tunnel;
