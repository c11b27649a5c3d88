//! The OpenAI chat-completions wire format, sans I/O: the request body, a whole
//! (non-streaming) answer, and a streaming answer's server-sent events fed in as bytes
//! arrive. Any OpenAI-compatible endpoint speaks it (vLLM, llama.cpp's server, Ollama,
//! Azure's and the hosted API).
//!
//! Owns encoding requests and decoding answers, including the error body and what the
//! HTTP status means (429 rate limited, 5xx the server's fault). Does not own the
//! connection, timeouts or retries (the model client), nor prompts (configuration).

use serde::{Deserialize, Serialize};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat-completions request body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest<'a> {
    /// The model name the endpoint knows.
    pub model: &'a str,
    /// The conversation, oldest first.
    pub messages: &'a [ChatMessage],
    /// Answer as server-sent events, token by token.
    pub stream: bool,
    /// Most tokens of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// `{"type": "json_object"}` asks for a JSON answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    /// With `stream`: ask for the token counts in the last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<serde_json::Value>,
}

/// A model's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// The answer's text.
    pub content: String,
    /// Tokens read (the prompt), when the endpoint says.
    pub tokens_in: Option<u64>,
    /// Tokens written (the answer), when the endpoint says.
    pub tokens_out: Option<u64>,
    /// Why it stopped (`stop`, `length`, …), when the endpoint says.
    pub finish_reason: Option<String>,
}

/// Why a call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// 429: slow down (the endpoint's `Retry-After`, seconds, when it sent one).
    #[error("rate limited by the model endpoint")]
    RateLimited(Option<u64>),
    /// 5xx: the endpoint failed.
    #[error("the model endpoint failed ({status}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// 4xx other than 429: the request is wrong (bad key, unknown model).
    #[error("the model endpoint refused the request ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The answer is not the wire format.
    #[error("the model endpoint's answer is not a chat completion: {0}")]
    BadAnswer(String),
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Whole {
    choices: Vec<WholeChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct WholeChoice {
    message: ChatMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

/// The error message of an error body (`{"error": {"message": …}}`), or the body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => b.error.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// What an HTTP status other than 200 means, with its body.
pub fn status_error(status: u16, retry_after: Option<u64>, body: &[u8]) -> ModelError {
    let message = error_message(body);
    match status {
        429 => ModelError::RateLimited(retry_after),
        500..=599 => ModelError::Server { status, message },
        _ => ModelError::Refused { status, message },
    }
}

/// A whole (non-streaming) answer.
pub fn parse_completion(body: &[u8]) -> Result<Completion, ModelError> {
    let w: Whole =
        serde_json::from_slice(body).map_err(|e| ModelError::BadAnswer(e.to_string()))?;
    let choice = w
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| ModelError::BadAnswer("no choices".into()))?;
    Ok(Completion {
        content: choice.message.content,
        tokens_in: w.usage.as_ref().and_then(|u| u.prompt_tokens),
        tokens_out: w.usage.as_ref().and_then(|u| u.completion_tokens),
        finish_reason: choice.finish_reason,
    })
}

/// A streaming answer, fed as its bytes arrive: server-sent events whose `data` is a
/// chunk (`choices[0].delta.content`), until `data: [DONE]`.
#[derive(Debug, Default)]
pub struct StreamParser {
    /// Bytes of a line not complete yet.
    line: Vec<u8>,
    /// `data` lines of the event being read.
    data: String,
    /// The answer so far.
    completion: Completion,
    done: bool,
}

/// Longest event kept (a malicious or broken endpoint cannot grow memory without bound).
const MAX_EVENT: usize = 1 << 20;

impl StreamParser {
    /// A parser at the start of an answer.
    pub fn new() -> StreamParser {
        StreamParser::default()
    }

    /// Feed the next bytes; `on_delta` gets each new piece of text as it completes an
    /// event. Errors when an event is not a chunk.
    pub fn feed(&mut self, bytes: &[u8], on_delta: &mut dyn FnMut(&str)) -> Result<(), ModelError> {
        for &b in bytes {
            if self.done {
                return Ok(());
            }
            if b != b'\n' {
                if self.line.len() + self.data.len() >= MAX_EVENT {
                    return Err(ModelError::BadAnswer("an event over 1 MiB".into()));
                }
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_complete(&line, on_delta)?;
        }
        Ok(())
    }

    fn line_complete(
        &mut self,
        line: &[u8],
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<(), ModelError> {
        if line.is_empty() {
            // The end of an event.
            let data = std::mem::take(&mut self.data);
            return self.event(&data, on_delta);
        }
        let text = std::str::from_utf8(line)
            .map_err(|_| ModelError::BadAnswer("an event is not UTF-8".into()))?;
        if let Some(d) = text.strip_prefix("data:") {
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
        // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing needed here.
        Ok(())
    }

    fn event(&mut self, data: &str, on_delta: &mut dyn FnMut(&str)) -> Result<(), ModelError> {
        if data.is_empty() {
            return Ok(());
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk =
            serde_json::from_str(data).map_err(|e| ModelError::BadAnswer(e.to_string()))?;
        if let Some(u) = chunk.usage {
            self.completion.tokens_in = u.prompt_tokens.or(self.completion.tokens_in);
            self.completion.tokens_out = u.completion_tokens.or(self.completion.tokens_out);
        }
        for c in chunk.choices.into_iter().take(1) {
            if let Some(text) = c.delta.content.filter(|t| !t.is_empty()) {
                on_delta(&text);
                self.completion.content.push_str(&text);
            }
            if c.finish_reason.is_some() {
                self.completion.finish_reason = c.finish_reason;
            }
        }
        Ok(())
    }

    /// Whether `data: [DONE]` arrived.
    pub fn done(&self) -> bool {
        self.done
    }

    /// The answer (whole once [`StreamParser::done`]).
    pub fn into_completion(self) -> Completion {
        self.completion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_the_wire_format() {
        let messages = [ChatMessage {
            role: "user".into(),
            content: "hola".into(),
        }];
        let r = ChatRequest {
            model: "gpt-4o-mini",
            messages: &messages,
            stream: true,
            max_tokens: Some(64),
            temperature: None,
            response_format: None,
            stream_options: Some(serde_json::json!({"include_usage": true})),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 64,
                "messages": [{"role": "user", "content": "hola"}],
                "stream_options": {"include_usage": true}})
        );
    }

    #[test]
    fn a_whole_answer_and_error_bodies_are_read() {
        let body = br#"{"id":"c1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"{\"intent\":\"visa\"}"},
            "finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        let c = parse_completion(body).unwrap();
        assert_eq!(c.content, r#"{"intent":"visa"}"#);
        assert_eq!((c.tokens_in, c.tokens_out), (Some(12), Some(5)));
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert!(matches!(
            parse_completion(b"{\"choices\":[]}"),
            Err(ModelError::BadAnswer(_))
        ));
        let err = br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#;
        assert_eq!(
            status_error(429, Some(2), err),
            ModelError::RateLimited(Some(2))
        );
        assert_eq!(
            status_error(503, None, err),
            ModelError::Server {
                status: 503,
                message: "Rate limit reached".into()
            }
        );
        assert!(matches!(
            status_error(401, None, b"nope"),
            ModelError::Refused { status: 401, .. }
        ));
    }

    #[test]
    fn a_stream_is_read_token_by_token_however_its_bytes_arrive() {
        let stream = concat!(
            ": keep-alive\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hola\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\", ¿en qué\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" puedo ayudar?\"},",
            "\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":7}}\n\n",
            "data: [DONE]\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"after done\"}}]}\n\n",
        )
        .as_bytes();
        for step in [1, 3, 7, stream.len()] {
            let mut p = StreamParser::new();
            let mut deltas = Vec::new();
            for piece in stream.chunks(step) {
                p.feed(piece, &mut |d| deltas.push(d.to_string())).unwrap();
            }
            assert!(p.done());
            assert_eq!(
                deltas,
                ["Hola", ", ¿en qué", " puedo ayudar?"],
                "step {step}"
            );
            let c = p.into_completion();
            assert_eq!(c.content, "Hola, ¿en qué puedo ayudar?");
            assert_eq!((c.tokens_in, c.tokens_out), (Some(30), Some(7)));
            assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        }
        let mut p = StreamParser::new();
        assert!(matches!(
            p.feed(b"data: {not json}\n\n", &mut |_| {}),
            Err(ModelError::BadAnswer(_))
        ));
    }
}
