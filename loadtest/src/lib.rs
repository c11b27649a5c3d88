//! Switchboard's load-test harness: the instrument capacity planners point at
//! Switchboard and at the servers it replaces.
//!
//! # Layout
//! - [`scenario`]: TOML scenarios (`loadtest/scenarios/`), overrides, roles.
//! - [`proto`]: the wire protocols (Switchboard, Socket.IO, raw), one file each.
//! - [`conn`]: one client connection (fastwebsockets).
//! - [`worker`]: a worker process holding a slice of the connections; open-model
//!   publishing; [`storm`] for the connect-storm scenario.
//! - [`stats`]: HDR histograms, timeline, loss accounting, merging across workers.
//! - [`html`]: self-contained HTML reports and comparisons.
//! - [`capacity`]: the capacity model (fit, predict); [`ratios`]: servers ÷ a baseline
//!   measured in the same run, with the spread over passes.
//! - [`scrape`]: reading the server's Prometheus `/metrics`.
//! - [`run`]: the coordinator; [`resources`]: `/proc` sampling; [`report`]: results.
//! - [`schedule`]: the open-model send schedule.
//! - [`stamp`], [`clock`]: the payload stamp and the shared monotonic clock.
//!
//! Traffic goes only to loopback addresses; runs are bounded in time and stop by
//! themselves.

pub mod capacity;
pub mod clock;

pub mod conn;
pub mod html;
pub mod proto;
pub mod ratios;
pub mod report;
pub mod resources;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod scrape;

pub mod stamp;
pub mod stats;
pub mod storm;
pub mod worker;
