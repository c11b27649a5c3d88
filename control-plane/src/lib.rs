//! Switchboard's control plane: configuration, token verification, the admin and
//! server HTTP API, metrics, and assembling a running server.
//!
//! # Layout
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`auth`]: JWT verification and minting; worker threads answering the shards.
//! - [`admin`]: health, Prometheus metrics, `POST /api/publish` (axum).
//! - [`metrics`]: Prometheus text rendering.
//! - [`store`]: durable channel streams in SQLite (the writer behind the engine's
//!   journal seam).
//! - [`server`]: start-up and shutdown of engine, workers and admin API.
//!
//! The binary (`switchboard`) parses flags and signals; everything else is here so
//! integration tests can run a real server in-process on port 0.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod config;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod schedule;
pub mod server;
pub mod store;
pub mod worker;

pub use config::Config;
pub use server::Server;
