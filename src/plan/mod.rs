//! Desired state as pure functions of (local facts, broker objects,
//! configuration), and the differences against what is there. No I/O.

pub mod gateway;
pub mod globalnet;
pub mod node;
pub mod routes;
