//! Strait connects Kubernetes clusters at layer 3 over WireGuard tunnels.

pub mod admin;
pub mod agent;
pub mod broker;
pub mod cli;
pub mod kubernetes;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod tunnel;
