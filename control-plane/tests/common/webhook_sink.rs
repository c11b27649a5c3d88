//! A local HTTP server that receives webhooks: it answers each POST with the next
//! scripted status (200 when none is left) and keeps every request's headers and body.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A request as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

/// The running sink (its thread ends with the test process).
pub struct WebhookSink {
    /// `http://127.0.0.1:PORT/hook`.
    pub url: String,
    statuses: Arc<Mutex<VecDeque<u16>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl WebhookSink {
    /// Start on a free port of 127.0.0.1.
    pub fn start() -> WebhookSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let statuses: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (st, rec) = (statuses.clone(), received.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() {
                        break;
                    }
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((n, v)) = h.split_once(':') {
                        headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let length = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = st.lock().unwrap().pop_front().unwrap_or(200);
                rec.lock().unwrap().push(Received {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    status,
                });
                let mut out = conn;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        WebhookSink {
            url,
            statuses,
            received,
        }
    }

    /// Answer the next POSTs with these statuses.
    pub fn answer(&self, statuses: &[u16]) {
        self.statuses.lock().unwrap().extend(statuses);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
