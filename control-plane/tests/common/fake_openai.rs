//! A local HTTP server speaking the OpenAI chat-completions wire format (the hosted API
//! cannot be reached here): JSON answers, server-sent-event streams, error statuses and
//! slow answers, each scripted by the test; every request body is kept.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// What the server answers next.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a whole chat completion of `content` (a stream of one piece when the
    /// request asked for a stream).
    Json(String),
    /// 200 with a stream of these pieces, `delay` apart.
    Stream(Vec<String>, Duration),
    /// This status with an OpenAI error body (and `Retry-After` seconds, if given).
    Status(u16, Option<u64>),
    /// Wait this long, then answer like `Json("late")`.
    Slow(Duration),
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The path.
    pub path: String,
    /// The `Authorization` header.
    pub auth: Option<String>,
    /// The JSON body.
    pub body: Value,
}

/// The running server (its thread ends with the test process).
pub struct FakeOpenAi {
    /// Where it listens.
    pub addr: SocketAddr,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeOpenAi {
    /// Start on a free port of 127.0.0.1; unscripted requests get `Json("ok")`.
    pub fn start() -> FakeOpenAi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let replies: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, s) = (replies.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, s) = (r.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &r, &s);
                });
            }
        });
        FakeOpenAi {
            addr,
            replies,
            seen,
        }
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answer the next request with `reply`.
    pub fn push(&self, reply: Reply) {
        self.replies.lock().unwrap().push_back(reply);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 1_800_000_000,
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    })
}

fn serve(
    conn: TcpStream,
    replies: &Mutex<VecDeque<Reply>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut length, mut auth) = (0usize, None);
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => auth = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let streamed = body["stream"] == true;
    seen.lock().unwrap().push(Seen { path, auth, body });
    let reply = match replies.lock().unwrap().pop_front() {
        // A whole answer to a streamed request comes as a stream of one piece.
        Some(Reply::Json(content)) if streamed => Reply::Stream(vec![content], Duration::ZERO),
        None if streamed => Reply::Stream(vec!["ok".into()], Duration::ZERO),
        Some(reply) => reply,
        None => Reply::Json("ok".into()),
    };
    let mut out = conn;
    let json_answer = |out: &mut TcpStream, v: &Value| {
        let text = v.to_string();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{text}",
            text.len()
        )
    };
    match reply {
        Reply::Json(content) => json_answer(&mut out, &completion(&content))?,
        Reply::Slow(wait) => {
            std::thread::sleep(wait);
            json_answer(&mut out, &completion("late"))?;
        }
        Reply::Status(status, retry_after) => {
            let text = json!({"error": {"message": format!("fake error {status}"),
                                        "type": "fake"}})
            .to_string();
            let retry = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
            write!(
                out,
                "HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\n{retry}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )?;
        }
        Reply::Stream(pieces, delay) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                 Connection: close\r\n\r\n"
            )?;
            for p in &pieces {
                let chunk = json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
                write!(out, "data: {chunk}\n\n")?;
                out.flush()?;
                std::thread::sleep(delay);
            }
            let last = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            let usage = json!({"choices": [], "usage": {"prompt_tokens": 20,
                "completion_tokens": pieces.len()}});
            write!(out, "data: {last}\n\ndata: {usage}\n\ndata: [DONE]\n\n")?;
        }
    }
    out.flush()
}
