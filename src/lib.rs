//! spiffe-mcp-gateway: a SPIFFE-native, zero-trust gateway for the Model
//! Context Protocol. See ARCHITECTURE.md for the pipeline.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod identity;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod policy_store;
pub mod proxy;
pub mod telemetry;
pub mod user_auth;
