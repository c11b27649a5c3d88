//! Switchboard's control plane: configuration, token verification, the admin and
//! server HTTP API, metrics, and assembling a running server.
//!
//! # Layout
//! Features (each owns its state and, where it has one, its worker thread):
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`auth`]: JWT verification and minting; the threads that answer the shards'
//!   token checks.
//! - [`store`]: durable channel streams in SQLite or PostgreSQL (the writer behind the
//!   engine's journal seam, start-up reading, history pages, retention, data
//!   requests), and what the HTTP side sees of it.
//! - [`schedule`], [`notify`], [`calls`]: scheduled messages, notifications, call
//!   signaling — each a worker thread on the store.
//! - [`alerts`]: threshold rules on the server's own metrics, webhooks.
//! - [`ai`]: pipelines that read chat messages (language, entities, intent, a model's
//!   replies and translations) and escalate to humans.
//! - [`tune`]: `switchboard tune check`, what this host allows and what to change.
//! - [`hooks`]: Socket.IO backend hooks (HTTP calls to the application's backend).
//! - [`audit`]: the audit log of admin actions.
//! - [`metrics`]: Prometheus text rendering.
//!
//! Plumbing:
//! - [`router`]: the one place control work from the shards is routed to a worker.
//! - [`shards`]: sending to shards from control-plane threads.
//! - [`worker`]: a worker thread's start and stop.
//! - [`sql`]: the one connection type the workers use on either database.
//! - [`clock`], [`ids`], [`process`]: wall-clock time, random ids, this process's
//!   resource use.
//!
//! Edges:
//! - [`http`]: the server API (`/api/*`), the admin API (`/admin/*`), health and
//!   metrics over HTTP. No feature module imports it.
//! - [`server`]: start-up and shutdown of engine, workers and HTTP; imports everything,
//!   imported by nothing but the binary and tests.
//!
//! The binary (`switchboard`) parses flags and signals; everything else is here so
//! integration tests can run a real server in-process on port 0.

pub mod admin_ops;
pub mod ai;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod router;
pub mod schedule;
pub mod server;
pub mod shards;
pub mod sql;
pub mod store;
pub mod tune;
pub mod worker;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;
