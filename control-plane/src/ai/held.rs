//! Fail-closed namespaces' messages held for moderation: what could not be screened
//! (the model did not answer, its breaker is open) waits here, in order, until its
//! worker screens it on a later try or an operator releases or rejects it.
//!
//! Owns the held messages of one pipeline (one list per worker, so a channel's
//! messages stay in order behind the first one held), their ids and the cap. Does not
//! own screening or releasing (`super::pipeline`), or the admin routes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use switchboard_engine::ai_tap::AiItem;

/// A held message.
#[derive(Debug)]
pub struct Held {
    /// Its id in the admin API.
    pub id: u64,
    /// The message (with its publisher's pending answer).
    pub item: Box<AiItem>,
    /// When it was held (unix ms).
    pub since_ms: u64,
    /// Why.
    pub why: String,
}

/// What the admin API shows of a held message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldView {
    /// Its id.
    pub id: u64,
    /// The pipeline's namespace.
    pub namespace: String,
    /// Its channel.
    pub channel: String,
    /// Who published it.
    pub author: Option<String>,
    /// Since when (unix ms).
    pub since_ms: u64,
    /// Why it is held.
    pub why: String,
}

/// One pipeline's held messages.
#[derive(Debug)]
pub struct HeldBook {
    namespace: String,
    cap: usize,
    workers: Vec<Mutex<VecDeque<Held>>>,
    next_id: AtomicU64,
    count: AtomicU64,
}

impl HeldBook {
    /// An empty book of `workers` lists holding at most `cap` messages in all.
    pub fn new(namespace: &str, workers: usize, cap: usize) -> HeldBook {
        HeldBook {
            namespace: namespace.into(),
            cap,
            workers: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
            count: AtomicU64::new(0),
        }
    }

    fn list(&self, worker: usize) -> std::sync::MutexGuard<'_, VecDeque<Held>> {
        self.workers[worker % self.workers.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hold `item` behind worker `worker`'s others; given back when the book is full.
    pub fn hold(
        &self,
        worker: usize,
        item: Box<AiItem>,
        now_ms: u64,
        why: String,
    ) -> Result<u64, Box<AiItem>> {
        if self.len() >= self.cap {
            return Err(item);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.list(worker).push_back(Held {
            id,
            item,
            since_ms: now_ms,
            why,
        });
        Ok(id)
    }

    /// Whether worker `worker` holds a message of `channel` (a later one must wait
    /// behind it).
    pub fn holds_channel(&self, worker: usize, channel: &str) -> bool {
        self.list(worker)
            .iter()
            .any(|h| &*h.item.channel == channel)
    }

    /// Take worker `worker`'s oldest held message, to try again.
    pub fn take_front(&self, worker: usize) -> Option<Held> {
        let h = self.list(worker).pop_front()?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(h)
    }

    /// Put a message taken by [`HeldBook::take_front`] back in front.
    pub fn put_back(&self, worker: usize, held: Held) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.list(worker).push_front(held);
    }

    /// Take the held message `id` (an operator's release or rejection).
    pub fn take(&self, id: u64) -> Option<Held> {
        for w in 0..self.workers.len() {
            let mut list = self.list(w);
            if let Some(i) = list.iter().position(|h| h.id == id) {
                self.count.fetch_sub(1, Ordering::Relaxed);
                return list.remove(i);
            }
        }
        None
    }

    /// What the admin API shows of `held`.
    pub fn view(&self, held: &Held) -> HeldView {
        HeldView {
            id: held.id,
            namespace: self.namespace.clone(),
            channel: held.item.channel.to_string(),
            author: held.item.author.as_deref().map(str::to_owned),
            since_ms: held.since_ms,
            why: held.why.clone(),
        }
    }

    /// What is held, oldest first per worker.
    pub fn views(&self) -> Vec<HeldView> {
        let mut out = Vec::new();
        for w in 0..self.workers.len() {
            out.extend(self.list(w).iter().map(|h| self.view(h)));
        }
        out.sort_by_key(|v| v.id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchboard_engine::mesh::PublishReply;
    use switchboard_protocol::Format;

    fn item(channel: &str) -> Box<AiItem> {
        Box::new(AiItem {
            pipeline: 0,
            channel: channel.into(),
            position: None,
            data: Bytes::from_static(b"1"),
            format: Format::Json,
            meta: None,
            key: None,
            from: None,
            author: Some("u".into()),
            reply: PublishReply::None,
            created: std::time::Instant::now(),
        })
    }

    #[test]
    fn held_messages_keep_their_order_and_the_cap() {
        let book = HeldBook::new("intake", 2, 3);
        let a = book
            .hold(0, item("intake:a"), 1, "model down".into())
            .unwrap();
        let b = book.hold(0, item("intake:a"), 2, "behind".into()).unwrap();
        let c = book
            .hold(1, item("intake:b"), 3, "model down".into())
            .unwrap();
        assert!(
            book.hold(1, item("intake:b"), 4, "x".into()).is_err(),
            "cap 3"
        );
        assert!(book.holds_channel(0, "intake:a"));
        assert!(!book.holds_channel(0, "intake:b"));
        assert_eq!(
            book.views().iter().map(|v| v.id).collect::<Vec<_>>(),
            [a, b, c]
        );
        let front = book.take_front(0).unwrap();
        assert_eq!(front.id, a);
        book.put_back(0, front);
        assert_eq!(book.take_front(0).unwrap().id, a);
        assert_eq!(book.take(c).unwrap().id, c);
        assert!(book.take(c).is_none());
        assert_eq!(book.len(), 1);
    }
}
