//! Scenarios: what to run, read from `loadtest/scenarios/*.toml`, overridable with
//! `--set key=value`.
//!
//! Owns the scenario keys and their defaults, validation (errors name the key), and
//! the deterministic assignment of a role to every connection index, so each worker
//! process computes the same plan for its own slice of connections.

use serde::{Deserialize, Serialize};

/// The workload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Ramp to `connections` at `ramp_per_sec`, hold for `duration_s`; memory and idle CPU.
    Idle,
    /// `connections` subscribers of one channel, `publishers` publishing `rate` msg/s in all.
    Fanout,
    /// `connections` members in rooms of `room_size`; every member publishes `rate` msg/s.
    Rooms,
    /// `connections` clients, each publishing `rate` msg/s to its own channel and
    /// receiving it back (a round trip through the server).
    Echo,
    /// Connect and authenticate at a rising rate until failures or the latency bound.
    ConnectStorm,
    /// Like fanout, but `slow_fraction` of the subscribers never read.
    SlowConsumers,
}

/// Which wire protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolName {
    /// Switchboard v1 envelopes (`format` picks MessagePack or JSON).
    Switchboard,
    /// Engine.IO v4 / Socket.IO v5 over the WebSocket transport, the comparison
    /// server's vocabulary (`loadtest/servers/socketio-server.js`).
    Socketio,
    /// Switchboard's Socket.IO endpoint (Engine.IO v4 / Socket.IO v5, its vocabulary).
    SwitchboardSocketio,
    /// Plain text frames; channel joined by `?room=` in the URL.
    Raw,
}

/// A scenario. Every key has a default; see `loadtest/scenarios/README.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name shown in reports.
    pub name: String,
    /// Workload shape.
    pub kind: Kind,
    /// Wire protocol.
    pub protocol: ProtocolName,
    /// `msgpack` or `json` (switchboard protocol only).
    pub format: String,
    /// Server WebSocket URL (`ws://host:port/path`); loopback only.
    pub url: String,
    /// More servers (the other nodes of a cluster, same path): connection `i` goes to
    /// `[url, urls…][i % (1 + urls.len())]`, publishers included.
    pub urls: Vec<String>,
    /// A token every connection sends (switchboard, socketio).
    pub token: Option<String>,
    /// An HS256 secret to mint one token per connection (`sub` = `lt-<index>`).
    pub token_secret: Option<String>,
    /// Connections: subscribers (fanout, slow-consumers), members (rooms), clients
    /// (echo, idle).
    pub connections: usize,
    /// Publishing connections (fanout, slow-consumers), in addition to `connections`.
    pub publishers: usize,
    /// Messages per second: in all (fanout, slow-consumers), per member (rooms), per
    /// client (echo).
    pub rate: f64,
    /// Payload size in bytes (at least the ~30-byte stamp).
    pub payload_bytes: usize,
    /// Members per room (rooms).
    pub room_size: usize,
    /// Connections opened per second while ramping up (all workers together).
    pub ramp_per_sec: f64,
    /// Measured run length, seconds.
    pub duration_s: f64,
    /// After publishing stops, how long to keep reading before counting losses, seconds.
    pub drain_s: f64,
    /// Fraction of subscribers that never read (slow-consumers).
    pub slow_fraction: f64,
    /// Worker processes; 0 = one per 15,000 connections, at least one.
    pub workers: usize,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+N) spread over workers (loopback only).
    pub source_ips: usize,
    /// Give up on a connection attempt after this long, ms.
    pub connect_timeout_ms: u64,
    /// connect-storm: first rate, connections per second.
    pub storm_start_rate: f64,
    /// connect-storm: added per step, connections per second.
    pub storm_step_rate: f64,
    /// connect-storm: length of each step, seconds.
    pub storm_step_s: f64,
    /// connect-storm: highest rate tried, connections per second.
    pub storm_max_rate: f64,
    /// connect-storm: a step fails when connect+auth p99 exceeds this, ms.
    pub storm_p99_ms: f64,
    /// connect-storm: a step fails when more than this fraction of attempts fail.
    pub storm_max_failure_ratio: f64,
    /// Channels every connection joins besides its own (Switchboard): `lt:x:<n>`, drawn
    /// so that each has about as many members as each connection has extra channels
    /// (the memory of connections in many rooms).
    pub extra_channels: usize,
    /// `typing` commands per second per room member (rooms, Switchboard).
    pub typing_rate: f64,
    /// Whether a Switchboard `publish` asks for its position (`false`: `"reply": false`,
    /// answered only when refused — as a Socket.IO emit without ack).
    pub publish_reply: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            kind: Kind::Fanout,
            protocol: ProtocolName::Switchboard,
            format: "msgpack".into(),
            url: "ws://127.0.0.1:7400/".into(),
            urls: Vec::new(),
            token: None,
            token_secret: None,
            connections: 1000,
            publishers: 1,
            rate: 10.0,
            payload_bytes: 64,
            room_size: 10,
            ramp_per_sec: 2000.0,
            duration_s: 20.0,
            drain_s: 2.0,
            slow_fraction: 0.1,
            workers: 0,
            source_ips: 32,
            connect_timeout_ms: 10_000,
            storm_start_rate: 500.0,
            storm_step_rate: 500.0,
            storm_step_s: 2.0,
            storm_max_rate: 20_000.0,
            storm_p99_ms: 100.0,
            storm_max_failure_ratio: 0.01,
            extra_channels: 0,
            typing_rate: 0.0,
            publish_reply: true,
        }
    }
}

/// What one connection does.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Connect, authenticate, answer heartbeats.
    Idle,
    /// Subscribe to `channel` and read.
    Subscriber {
        /// Channel.
        channel: String,
    },
    /// Subscribe to `channel` and never read afterwards.
    Slow {
        /// Channel.
        channel: String,
    },
    /// Publish to `channel` at `rate` msg/s; subscribe to it too if `subscribe`.
    Publisher {
        /// Channel.
        channel: String,
        /// Messages per second.
        rate: f64,
        /// Also subscribe (rooms, echo).
        subscribe: bool,
    },
}

impl Role {
    /// The channel this connection joins, if any.
    pub fn subscribes_to(&self) -> Option<&str> {
        match self {
            Role::Subscriber { channel } | Role::Slow { channel } => Some(channel),
            Role::Publisher {
                channel,
                subscribe: true,
                ..
            } => Some(channel),
            _ => None,
        }
    }
}

impl Scenario {
    /// Read a scenario file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid scenario {}: {e}", path.display()))
    }

    /// Apply `key=value` overrides (the value is read as TOML, else as a string).
    pub fn with_overrides(self, sets: &[String]) -> anyhow::Result<Scenario> {
        let mut table = toml::Table::try_from(&self)?;
        for set in sets {
            let (key, raw) = set
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--set {set}: expected key=value"))?;
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            table.insert(key.trim().to_string(), value);
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("--set: {e}"))
    }

    /// Check the values; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let fail = |m: &str| Err(anyhow::anyhow!("{m}"));
        for url in std::iter::once(&self.url).chain(&self.urls) {
            if !url.starts_with("ws://") {
                return fail("url must start with ws:// (wss is not supported)");
            }
            let host = url[5..].split(['/', ':']).next().unwrap_or("");
            if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
                return fail(
                    "url must point at a loopback address (127.0.0.0/8, localhost or [::1])",
                );
            }
        }
        if !matches!(self.format.as_str(), "msgpack" | "json") {
            return fail("format must be msgpack or json");
        }
        if self.duration_s <= 0.0 || self.ramp_per_sec <= 0.0 {
            return fail("duration_s and ramp_per_sec must be positive");
        }
        if self.rate < 0.0 || !self.rate.is_finite() {
            return fail("rate must be a non-negative number");
        }
        if !(0.0..=1.0).contains(&self.slow_fraction) {
            return fail("slow_fraction must be between 0 and 1");
        }
        if self.typing_rate < 0.0 || !self.typing_rate.is_finite() {
            return fail("typing_rate must be a non-negative number");
        }
        if self.extra_channels > 200 {
            return fail("extra_channels must be at most 200");
        }
        if self.kind == Kind::Rooms && self.room_size == 0 {
            return fail("room_size must be at least 1");
        }
        if matches!(self.kind, Kind::Fanout | Kind::SlowConsumers)
            && self.publishers == 0
            && self.rate > 0.0
        {
            return fail("publishers must be at least 1 when rate > 0");
        }
        if self.source_ips == 0 || self.source_ips > 250 {
            return fail("source_ips must be between 1 and 250");
        }
        Ok(())
    }

    /// Connections in all.
    pub fn total_connections(&self) -> usize {
        match self.kind {
            Kind::Fanout | Kind::SlowConsumers => self.connections + self.publishers,
            _ => self.connections,
        }
    }

    /// Worker processes to use.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            self.total_connections().div_ceil(15_000).max(1)
        }
    }

    /// The extra channels connection `i` joins (`extra_channels` of them).
    pub fn extra_channels_of(&self, i: usize) -> Vec<String> {
        let n = self.connections.max(1);
        let step = n / self.extra_channels.max(1) + 1;
        (0..self.extra_channels)
            .map(|k| format!("lt:x:{}", (i + k * step) % n))
            .collect()
    }

    /// The role of connection `i` (0-based, over all workers).
    pub fn role(&self, i: usize) -> Role {
        match self.kind {
            Kind::Idle | Kind::ConnectStorm => Role::Idle,
            Kind::Fanout | Kind::SlowConsumers => {
                let channel = "lt:fanout".to_string();
                if i < self.connections {
                    let slow = (self.connections as f64 * self.slow_fraction).floor() as usize;
                    if self.kind == Kind::SlowConsumers && i < slow {
                        Role::Slow { channel }
                    } else {
                        Role::Subscriber { channel }
                    }
                } else {
                    Role::Publisher {
                        channel,
                        rate: self.rate / self.publishers.max(1) as f64,
                        subscribe: false,
                    }
                }
            }
            Kind::Rooms => Role::Publisher {
                channel: format!("lt:room:{}", i / self.room_size),
                rate: self.rate,
                subscribe: true,
            },
            Kind::Echo => Role::Publisher {
                channel: format!("lt:echo:{i}"),
                rate: self.rate,
                subscribe: true,
            },
        }
    }

    /// Connection indices of worker `w` (contiguous slices).
    pub fn slice(&self, w: usize) -> std::ops::Range<usize> {
        let n = self.total_connections();
        let k = self.worker_count();
        (n * w / k)..(n * (w + 1) / k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_load_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap();
                s.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 6, "six scenarios ship");
    }

    #[test]
    fn overrides_and_errors() {
        let s = Scenario::default()
            .with_overrides(&[
                "connections=50".into(),
                "kind=\"rooms\"".into(),
                "format=json".into(),
            ])
            .unwrap();
        assert_eq!(
            (s.connections, s.kind, s.format.as_str()),
            (50, Kind::Rooms, "json")
        );
        assert!(Scenario::default()
            .with_overrides(&["nope=1".into()])
            .unwrap_err()
            .to_string()
            .contains("nope"));
        assert!(Scenario::default()
            .with_overrides(&["connections=\"many\"".into()])
            .is_err());
        let bad = Scenario {
            url: "ws://10.0.0.1:80/".into(),
            ..Scenario::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("loopback"));
    }

    #[test]
    fn roles_and_slices() {
        let s = Scenario {
            kind: Kind::Fanout,
            connections: 10,
            publishers: 2,
            rate: 100.0,
            workers: 3,
            ..Scenario::default()
        };
        assert_eq!(s.total_connections(), 12);
        assert_eq!(
            s.role(0),
            Role::Subscriber {
                channel: "lt:fanout".into()
            }
        );
        assert_eq!(
            s.role(11),
            Role::Publisher {
                channel: "lt:fanout".into(),
                rate: 50.0,
                subscribe: false
            }
        );
        let all: Vec<usize> = (0..3).flat_map(|w| s.slice(w)).collect();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        let r = Scenario {
            kind: Kind::Rooms,
            connections: 25,
            room_size: 10,
            ..Scenario::default()
        };
        assert_eq!(r.role(19).subscribes_to(), Some("lt:room:1"));
        let slow = Scenario {
            kind: Kind::SlowConsumers,
            connections: 10,
            slow_fraction: 0.3,
            ..Scenario::default()
        };
        assert!(matches!(slow.role(2), Role::Slow { .. }));
        assert!(matches!(slow.role(3), Role::Subscriber { .. }));
    }
}
