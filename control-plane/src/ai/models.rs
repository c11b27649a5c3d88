//! The configured model endpoints, each with its client, breaker and counters, and the
//! one way the pipelines call them: through the breaker, timed and counted.
//!
//! Owns [`Model`] and [`Model::call`]. Does not own what is asked
//! ([`super::prompts`]) or what a pipeline does when a call fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::breaker::{Admit, Breaker};
use super::chat_wire::{ChatMessage, Completion};
use super::config::ModelConfig;
use super::model::{CallError, CallOptions, ModelClient, ModelEndpoint};
use super::stats::ModelStats;
use super::ConfigError;
use crate::clock::now_ms;

/// One endpoint.
#[derive(Debug)]
pub struct Model {
    /// Its name in `[ai.models]`.
    pub name: String,
    client: ModelClient,
    /// Its breaker.
    pub breaker: Breaker,
    /// Its counters.
    pub stats: ModelStats,
}

/// Why a call through the breaker gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The call was made and failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The breaker is open (or another call is probing): no call was made.
    #[error("the model endpoint's circuit breaker is open")]
    BreakerOpen,
}

impl Model {
    /// The endpoint `name` of `cfg`, its API key read from the environment.
    pub fn new(name: &str, cfg: &ModelConfig) -> Result<Model, ConfigError> {
        let endpoint = ModelEndpoint {
            base_url: cfg.base_url.clone(),
            model: cfg.model.clone(),
            api_key: cfg.api_key(name)?,
        };
        Ok(Model {
            name: name.into(),
            client: ModelClient::new(endpoint, Duration::from_millis(cfg.timeout_ms)),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown_ms),
            stats: ModelStats::default(),
        })
    }

    /// Call the endpoint if the breaker lets it (streamed with `on_delta`), and count
    /// how it went.
    pub fn call(
        &self,
        messages: &[ChatMessage],
        options: CallOptions,
        on_delta: Option<&mut dyn FnMut(&str)>,
    ) -> Result<Completion, Failure> {
        if self.breaker.admit(now_ms()) == Admit::Refuse {
            self.stats.error("breaker_open");
            return Err(Failure::BreakerOpen);
        }
        let started = Instant::now();
        let result = self.client.complete(messages, options, on_delta);
        self.stats
            .called(started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64);
        match result {
            Ok(c) => {
                self.breaker.success();
                self.stats
                    .tokens(c.tokens_in.unwrap_or(0), c.tokens_out.unwrap_or(0));
                Ok(c)
            }
            Err(e) => {
                self.stats.error(e.kind());
                if self.breaker.failure(now_ms()) {
                    tracing::warn!(model = %self.name, error = %e, "model breaker opened");
                }
                Err(Failure::Call(e))
            }
        }
    }
}

/// Every configured endpoint, by name.
pub fn build(
    models: &BTreeMap<String, ModelConfig>,
) -> Result<BTreeMap<String, Arc<Model>>, ConfigError> {
    models
        .iter()
        .map(|(name, cfg)| Ok((name.clone(), Arc::new(Model::new(name, cfg)?))))
        .collect()
}
