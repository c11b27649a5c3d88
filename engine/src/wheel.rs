//! Deadlines for every connection of one shard, in one timing wheel.
//!
//! Owns a ring of slots of `(slot, generation)` entries, one entry per connection.
//! Does not own connection state or decide anything: [`HeartbeatWheel::advance`] hands
//! due entries to the caller, which looks at the connection (handshake, auth, ping,
//! pong, close deadlines) and schedules its next visit. One timer per shard drives it,
//! so no connection has a timer of its own. Stale entries (connection gone, slot
//! reused) are recognised by generation and dropped.

/// A timing wheel with `tick`-sized slots.
#[derive(Debug)]
pub struct HeartbeatWheel {
    slots: Vec<Vec<(u32, u32)>>,
    /// Last tick processed.
    now: u64,
    /// Spare vector swapped in while a slot is processed (keeps its capacity).
    spare: Vec<(u32, u32)>,
}

impl HeartbeatWheel {
    /// A wheel with `slots` slots (its horizon in ticks); later deadlines are clamped
    /// to the horizon and re-examined then.
    pub fn new(slots: usize) -> Self {
        HeartbeatWheel {
            slots: (0..slots.max(2)).map(|_| Vec::new()).collect(),
            now: 0,
            spare: Vec::new(),
        }
    }

    /// The last tick processed.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Number of slots: the horizon, in ticks.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a wheel has at least two slots.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Visit `entry` at tick `at`, clamped to between the next tick and the horizon.
    /// Returns the tick the entry will actually be visited at.
    pub fn schedule(&mut self, at: u64, entry: (u32, u32)) -> u64 {
        let len = self.slots.len() as u64;
        let at = at.clamp(self.now + 1, self.now + len - 1);
        self.slots[(at % len) as usize].push(entry);
        at
    }

    /// Move to tick `to`, calling `visit(tick, entry)` for every entry due on the way.
    pub fn advance(&mut self, to: u64, mut visit: impl FnMut(&mut Self, u64, (u32, u32))) {
        // If the shard stalled for longer than the horizon, every slot is due once.
        let len = self.slots.len() as u64;
        let from = if to > self.now + len {
            to - len
        } else {
            self.now
        };
        for t in from + 1..=to {
            self.now = t;
            let i = (t % len) as usize;
            let mut due = std::mem::replace(&mut self.slots[i], std::mem::take(&mut self.spare));
            for &e in &due {
                visit(self, t, e);
            }
            due.clear();
            self.spare = due;
        }
        self.now = self.now.max(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_on_time_and_reschedules() {
        let mut w = HeartbeatWheel::new(8);
        w.schedule(3, (1, 0));
        w.schedule(20, (2, 0)); // clamped to the horizon (tick 7)
        let mut seen = vec![];
        w.advance(10, |w, t, e| {
            seen.push((t, e.0));
            if e.0 == 1 && t < 6 {
                w.schedule(t + 2, e);
            }
        });
        assert_eq!(
            seen,
            vec![(3, 1), (5, 1), (7, 2), (7, 1)],
            "in-slot order is insertion order"
        );
    }

    #[test]
    fn long_stall_visits_everything_once() {
        let mut w = HeartbeatWheel::new(4);
        w.schedule(1, (1, 0));
        w.schedule(3, (2, 0));
        let mut n = 0;
        w.advance(100, |_, _, _| n += 1);
        assert_eq!(n, 2);
    }
}
