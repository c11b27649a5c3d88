//! A link to Redis for the control plane's worker threads (the scheduler keeps its
//! jobs there when nodes share Redis, `crate::schedule`).
//!
//! The workers are plain threads; Redis is reached from the cluster thread's runtime.
//! A worker hands a command over and waits for its answer, at most as long as it
//! says; the cluster thread runs the commands in order on one link of its own (made
//! on first use, made again after a failure, found through the same [`Source`] as
//! every other link: one server, the Sentinels' master or a Redis Cluster).
//!
//! Owns [`WorkerLink`]. Does not own what the commands do (their callers).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use super::conn::Link;
use super::source::Source;

/// Commands and where their answers go.
pub(super) struct Ask {
    cmds: Vec<redis::Cmd>,
    answer: std::sync::mpsc::SyncSender<Result<Vec<redis::Value>, String>>,
}

/// The workers' way to Redis (clone freely); refuses everything for a node alone.
#[derive(Debug, Clone, Default)]
pub struct WorkerLink {
    enabled: bool,
    tx: Arc<OnceLock<mpsc::UnboundedSender<Ask>>>,
}

impl WorkerLink {
    /// A link that works once the cluster thread starts, if `enabled` (`[cluster]`
    /// names a Redis).
    pub fn new(enabled: bool) -> WorkerLink {
        WorkerLink {
            enabled,
            ..Default::default()
        }
    }

    /// Whether this node shares Redis with others.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Run `cmd`, waiting at most `within` for the answer (blocks: worker threads
    /// only). `Err` names why there is none: no cluster, Redis away, or too slow.
    pub fn query(&self, cmd: redis::Cmd, within: Duration) -> Result<redis::Value, String> {
        let mut answers = self.query_all(vec![cmd], within)?;
        answers
            .pop()
            .ok_or_else(|| "Redis gave no answer".to_string())
    }

    /// Run `cmds` (keys in any slots) as one pipeline on one server, concurrently on a
    /// Redis Cluster; their answers in order. Blocks, like [`WorkerLink::query`].
    pub fn query_all(
        &self,
        cmds: Vec<redis::Cmd>,
        within: Duration,
    ) -> Result<Vec<redis::Value>, String> {
        let Some(tx) = self.tx.get() else {
            return Err("the cluster link is not running".into());
        };
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, rx) = std::sync::mpsc::sync_channel(1);
        tx.send(Ask { cmds, answer })
            .map_err(|_| "the cluster link stopped".to_string())?;
        rx.recv_timeout(within)
            .map_err(|_| format!("Redis did not answer within {within:?}"))?
    }

    /// The cluster thread's end (once).
    pub(super) fn attach(&self) -> Option<mpsc::UnboundedReceiver<Ask>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx.set(tx).ok().map(|_| rx)
    }
}

/// Run the workers' commands until the node stops.
pub(super) async fn serve(source: Source, mut asks: mpsc::UnboundedReceiver<Ask>) {
    let mut link: Option<Link> = None;
    while let Some(ask) = asks.recv().await {
        if link.is_none() {
            match source.link().await {
                Ok(l) => link = Some(l),
                Err(e) => {
                    let _ = ask.answer.send(Err(format!("Redis unreachable: {e}")));
                    continue;
                }
            }
        }
        let conn = link.as_mut().expect("linked above");
        let cmds = ask.cmds.into_iter().map(|c| (c, true)).collect();
        let answer = tokio::time::timeout(Duration::from_secs(2), conn.batch(cmds)).await;
        let answer = match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    link = None;
                }
                Err(format!("Redis: {e}"))
            }
            Err(_) => {
                link = None;
                Err("Redis did not answer within 2 s".into())
            }
        };
        let _ = ask.answer.send(answer);
    }
}
