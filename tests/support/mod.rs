//! The in-process test floor: a test CA, a fake Workload API, a stub mTLS
//! upstream, agents, and the gateway itself built by `app::build` on port 0.
//! No SPIRE, no Python: each test runs in milliseconds.

// Each test binary uses part of the floor.
#![allow(dead_code)]

pub mod agent;
pub mod ca;
pub mod gateway;
pub mod upstream;
pub mod workload_api;
