//! One client connection: TCP from a chosen source address, the HTTP upgrade, then a
//! fastwebsockets client split into a read half and a shared write half.
//!
//! Owns the bytes that arrive right behind the 101 answer (some servers speak first):
//! they are replayed to the WebSocket reader through [`Prefixed`].

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use fastwebsockets::{Frame, Payload, Role, WebSocketRead, WebSocketWrite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

use crate::proto::Out;

/// A reader that first yields bytes already read.
pub struct Prefixed {
    prefix: BytesMut,
    inner: OwnedReadHalf,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The write half, shared by the publisher loop and the reader's obligatory answers
/// (pongs). One task thread: `RefCell` is enough, never held across an await.
pub type Writer = Rc<tokio::sync::Mutex<WebSocketWrite<OwnedWriteHalf>>>;

/// An open WebSocket client.
pub struct Client {
    /// Frames from the server.
    pub read: WebSocketRead<Prefixed>,
    /// Frames to the server.
    pub write: Writer,
}

/// Why a connection attempt failed (a metric label).
#[derive(Debug)]
pub struct ConnectError(pub &'static str, pub String);

/// Connect from `source` to `server`, upgrade at `path`.
pub async fn connect(
    source: Option<Ipv4Addr>,
    server: SocketAddr,
    host: &str,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<Client, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(|e| ConnectError("socket", e.to_string()))?;
    if let Some(ip) = source {
        // Choose the port at connect time, on the full 4-tuple: ports stay usable across
        // destinations, and loopback TIME_WAIT entries from a previous run can be reused.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a valid int option.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        socket
            .bind(SocketAddr::from((ip, 0)))
            .map_err(|e| ConnectError("bind", e.to_string()))?;
    }
    let mut stream = socket
        .connect(server)
        .await
        .map_err(|e| ConnectError("connect", e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let proto = subprotocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| ConnectError("upgrade", e.to_string()))?;
    let mut buf = BytesMut::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(ConnectError("upgrade", "response head too large".into()));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| ConnectError("upgrade", e.to_string()))?;
        if n == 0 {
            return Err(ConnectError("upgrade", "closed before the 101".into()));
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(
            &buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len())],
        )
        .into_owned();
        return Err(ConnectError("refused", line));
    }
    buf.advance(head_end);
    let (r, w) = stream.into_split();
    let (read, write) = fastwebsockets::after_handshake_split(
        Prefixed {
            prefix: buf,
            inner: r,
        },
        w,
        Role::Client,
    );
    Ok(Client {
        read,
        write: Rc::new(tokio::sync::Mutex::new(write)),
    })
}

/// Send one message.
pub async fn send(w: &Writer, out: Out) -> Result<(), fastwebsockets::WebSocketError> {
    let frame = if out.text {
        Frame::text(Payload::Owned(out.bytes))
    } else {
        Frame::binary(Payload::Owned(out.bytes))
    };
    w.lock().await.write_frame(frame).await
}

/// Read the next frame, answering pings and closes through the writer.
pub async fn next_frame<'a>(
    read: &'a mut WebSocketRead<Prefixed>,
    write: &Writer,
) -> Result<Frame<'a>, fastwebsockets::WebSocketError> {
    let writer = write.clone();
    read.read_frame(&mut move |frame: Frame<'_>| {
        let writer = writer.clone();
        let owned = Frame::new(
            frame.fin,
            frame.opcode,
            None,
            Payload::Owned(frame.payload.to_vec()),
        );
        async move { writer.lock().await.write_frame(owned).await }
    })
    .await
}

/// Shared counters of a worker, for progress lines.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections ready.
    pub ready: usize,
    /// Connections that failed to get ready.
    pub failed: usize,
}

/// Shared, single-threaded progress.
pub type SharedProgress = Rc<RefCell<Progress>>;
