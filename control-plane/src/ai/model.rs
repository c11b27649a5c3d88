//! The model client: one chat-completions call to an OpenAI-compatible endpoint, whole
//! or streamed token by token, on the calling (worker) thread, with `ureq`.
//!
//! Owns the HTTP exchange: `POST {base_url}/chat/completions`, the API key as a bearer
//! token (never logged), a timeout for the whole call, what the status and body mean
//! ([`super::chat_wire`]). Does not own retries, budgets or breakers (the pipeline that
//! calls it decides), nor prompts.

use std::io::Read;
use std::time::Duration;

use super::chat_wire::{self, ChatMessage, ChatRequest, Completion, ModelError, StreamParser};

/// Where a model is.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelEndpoint {
    /// E.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name the endpoint knows.
    pub model: String,
    /// Sent as `Authorization: Bearer …` (from the environment; never shown).
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ModelEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEndpoint")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a call asks for besides the conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallOptions {
    /// Most tokens of the answer.
    pub max_tokens: Option<u32>,
    /// Ask for a JSON object as the answer.
    pub json: bool,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

/// Why a call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The endpoint answered with an error, or not in the wire format.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// No whole answer within the call's timeout.
    #[error("the model endpoint did not answer in time")]
    Timeout,
    /// The endpoint could not be reached.
    #[error("the model endpoint cannot be reached: {0}")]
    Unreachable(String),
}

impl CallError {
    /// A short name for metrics (`errors by kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Model(ModelError::RateLimited(_)) => "rate_limited",
            CallError::Model(ModelError::Server { .. }) => "server",
            CallError::Model(ModelError::Refused { .. }) => "refused",
            CallError::Model(ModelError::BadAnswer(_)) => "bad_answer",
            CallError::Timeout => "timeout",
            CallError::Unreachable(_) => "unreachable",
        }
    }
}

/// A client of one endpoint.
#[derive(Debug)]
pub struct ModelClient {
    agent: ureq::Agent,
    endpoint: ModelEndpoint,
    url: String,
}

impl ModelClient {
    /// A client whose every call ends within `timeout`.
    pub fn new(endpoint: ModelEndpoint, timeout: Duration) -> ModelClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let url = format!(
            "{}/chat/completions",
            endpoint.base_url.trim_end_matches('/')
        );
        ModelClient {
            agent,
            endpoint,
            url,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &ModelEndpoint {
        &self.endpoint
    }

    /// Ask for the next message of `messages`: whole, or with `on_delta`, streamed (each
    /// piece of text handed over as it arrives; the answer is also returned whole).
    pub fn complete(
        &self,
        messages: &[ChatMessage],
        options: CallOptions,
        on_delta: Option<&mut dyn FnMut(&str)>,
    ) -> Result<Completion, CallError> {
        let stream = on_delta.is_some();
        let request = ChatRequest {
            model: &self.endpoint.model,
            messages,
            stream,
            max_tokens: options.max_tokens,
            temperature: options.temperature,
            response_format: options
                .json
                .then(|| serde_json::json!({"type": "json_object"})),
            stream_options: stream.then(|| serde_json::json!({"include_usage": true})),
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| CallError::Unreachable(format!("cannot encode the request: {e}")))?;
        let mut call = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header(
                "Accept",
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            );
        if let Some(key) = &self.endpoint.api_key {
            call = call.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = call.send(&body[..]).map_err(transport)?;
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_vec()
                .unwrap_or_default();
            return Err(chat_wire::status_error(status, retry_after, &body).into());
        }
        let Some(on_delta) = on_delta else {
            let body = response
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_vec()
                .map_err(transport)?;
            return Ok(chat_wire::parse_completion(&body)?);
        };
        let mut parser = StreamParser::new();
        let mut reader = response.into_body().into_reader();
        let mut buf = [0u8; 4096];
        while !parser.done() {
            let n = reader.read(&mut buf).map_err(|e| {
                // ureq reports its own timeout inside the I/O error.
                let ours = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>());
                if e.kind() == std::io::ErrorKind::TimedOut
                    || matches!(ours, Some(ureq::Error::Timeout(_)))
                {
                    CallError::Timeout
                } else {
                    CallError::Unreachable(e.to_string())
                }
            })?;
            if n == 0 {
                break;
            }
            parser.feed(&buf[..n], on_delta)?;
        }
        if !parser.done() {
            return Err(ModelError::BadAnswer("the stream ended before [DONE]".into()).into());
        }
        Ok(parser.into_completion())
    }
}

/// A transport failure as a call error.
fn transport(e: ureq::Error) -> CallError {
    match e {
        ureq::Error::Timeout(_) => CallError::Timeout,
        e => CallError::Unreachable(e.to_string()),
    }
}
