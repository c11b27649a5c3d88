//! The control plane's one error type.
//!
//! Owns every way loading the configuration or starting the server can fail, each
//! variant naming the key, the file or the component. Answers to API callers (HTTP
//! statuses and JSON errors, refusals of notifications or schedules) are not errors of
//! the crate: they are in `http` and the features.

use std::path::PathBuf;

/// Why the configuration is refused or the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown or mistyped (the message names it).
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    ConfigParse {
        /// The file, if the problem is in one.
        path: Option<PathBuf>,
        /// What the parser says, including the key.
        message: String,
    },
    /// An environment override names no known key or has a bad value.
    #[error("invalid environment override {var}: {message}")]
    ConfigEnv {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config value: {key}: {message}")]
    Config {
        /// The key (`auth.threads`, `admin.api_keys[2].key`, `namespaces.chat`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The store file cannot be opened, created, read or written at start.
    #[error("store {path}: {message}")]
    Store {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A component of the server (`component`: a worker, the auth threads, the admin
    /// listener) could not start.
    #[error("cannot start {component}: {message}")]
    Start {
        /// Which component.
        component: &'static str,
        /// Why.
        message: String,
    },
    /// The engine refused its configuration or could not start.
    #[error(transparent)]
    Engine(#[from] switchboard_engine::Error),
}

impl Error {
    /// A [`Error::Config`] from a message that opens with the key, as validation
    /// messages do (`"auth.threads must be greater than 0"`,
    /// `"namespaces.x: a namespace name is …"`).
    pub fn invalid(text: impl Into<String>) -> Error {
        let text = text.into();
        let (key, rest) = text.split_once(' ').unwrap_or((&text, ""));
        Error::config(key.trim_end_matches(':'), rest)
    }

    /// A [`Error::Config`] for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// [`Error::Start`] for `component`.
    pub fn start(component: &'static str, message: impl std::fmt::Display) -> Error {
        Error::Start {
            component,
            message: message.to_string(),
        }
    }
}

/// The control plane's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
