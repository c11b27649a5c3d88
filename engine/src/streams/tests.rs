//! Tests of the streams: positions, retention, recovery, seeding, the memory budget.

use super::*;

#[test]
fn offsets_rise_by_one_and_epochs_differ() {
    let mut s = Streams::new(42);
    let a1 = s.next("a", 0);
    let a2 = s.next("a", 1);
    let b1 = s.next("b", 1);
    assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
    assert_eq!(a1.epoch, a2.epoch);
    assert_ne!(a1.epoch, b1.epoch);
    assert_eq!(s.current("a").unwrap().offset, 0, "not released yet");
    s.show("a", 2);
    assert_eq!(s.current("a"), Some(a2));
    assert_ne!(Streams::new(43).next("a", 0).epoch, a1.epoch);
}

#[test]
fn stored_streams_with_history_outlive_the_idle_time_until_their_ttl() {
    let default = memory_only(8, 1000);
    let ns = [namespace("inbox", Durability::Sync, 8, 5000)];
    // ttl: 5000 ms / 10 ms ticks = 500 ticks; idle: 50 ticks.
    let mut s = Streams::with_policies(1, Arc::new(Policies::new(default, &ns, 10)));
    let p = s.next("inbox:a", 0);
    s.retain("inbox:a", entry(p.offset, 0), 8, 500);
    s.touch("inbox:empty", 0);
    s.next("room:x", 0);
    s.show("room:x", 1);
    assert_eq!(
        s.sweep(100, 50, 50, 10),
        2,
        "the empty inbox and the room go"
    );
    assert!(s.current("inbox:a").is_some(), "kept: it retains a message");
    assert_eq!(s.sweep(600, 50, 50, 10), 1, "gone once its ttl passed");
}

#[test]
fn idle_streams_are_forgotten_and_restart_in_a_new_epoch() {
    let mut s = Streams::new(7);
    let old = s.next("quiet", 0);
    s.next("busy", 0);
    s.next("busy", 90);
    let waiting = s.next("waiting", 0);
    assert_eq!(
        s.sweep(100, 50, 50, 10),
        0,
        "unreleased publications keep even a quiet stream"
    );
    s.show("quiet", 1);
    s.show("busy", 2);
    s.show("waiting", waiting.offset);
    assert_eq!(s.sweep(100, 50, 50, 10), 2);
    assert!(s.current("waiting").is_none());
    assert_eq!(s.len(), 1);
    assert!(s.current("quiet").is_none());
    let new = s.next("quiet", 101);
    assert_eq!(new.offset, 1);
    assert_ne!(
        new.epoch, old.epoch,
        "a new epoch says earlier positions are gone"
    );
    assert_eq!(s.current("busy").unwrap().offset, 2);
}

/// A namespace of durability `durability` keeping `history_size` for `history_ttl_ms`.
fn namespace(
    name: &str,
    durability: Durability,
    history_size: usize,
    history_ttl_ms: u64,
) -> crate::journal::NamespacePolicy {
    crate::journal::NamespacePolicy {
        retention: Default::default(),
        edits: false,
        name: name.into(),
        durability,
        history_size,
        history_ttl_ms,
        rules: Default::default(),
        presence: false,
        presence_events: false,
        max_channel_bytes: 0,
    }
}

/// The policy of channels in no configured namespace: memory only.
fn memory_only(keep: usize, ttl: u32) -> Policy {
    Policy {
        durability: Durability::None,
        keep,
        ttl,
        max_bytes: 0,
        edits: false,
    }
}

fn entry(offset: u64, tick: u32) -> Entry {
    Entry {
        offset,
        tick,
        data: Bytes::from(offset.to_string()),
        meta: None,
        format: Format::Json,
        from: None,
        author: None,
        event: None,
        revises: None,
        revised: None,
    }
}

#[test]
fn history_keeps_by_count_and_age_and_recovery_is_all_or_nothing() {
    let mut s = Streams::new(1);
    let e = s.touch("c", 0);
    assert_eq!(
        e.offset, 0,
        "a subscriber learns the epoch before any publication"
    );
    for t in 0..10u32 {
        let p = s.next("c", t);
        assert_eq!(p.epoch, e.epoch);
        s.retain("c", entry(p.offset, t), 5, 100);
    }
    let (top, h) = s.history("c", 0, 100, false, 10, 100);
    assert_eq!(top.offset, 10);
    assert_eq!(
        h.iter().map(|e| e.offset).collect::<Vec<_>>(),
        [6, 7, 8, 9, 10]
    );
    let (_, h) = s.history("c", 0, 2, true, 10, 100);
    assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [10, 9]);
    let (_, h) = s.history("c", 9, 2, true, 10, 100);
    assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [8, 7]);
    let (_, h) = s.history("c", 7, 2, false, 10, 100);
    assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [8, 9]);

    let ok = s.recover(
        "c",
        Position {
            epoch: e.epoch,
            offset: 5,
        },
        10,
        100,
    );
    assert!(ok.recovered);
    assert_eq!(ok.publications.len(), 5);
    let up_to_date = s.recover("c", top, 10, 100);
    assert!(up_to_date.recovered && up_to_date.publications.is_empty());
    let too_old = s.recover(
        "c",
        Position {
            epoch: e.epoch,
            offset: 4,
        },
        10,
        100,
    );
    assert!(!too_old.recovered && too_old.publications.is_empty());
    let other_epoch = s.recover(
        "c",
        Position {
            epoch: e.epoch ^ 1,
            offset: 9,
        },
        10,
        100,
    );
    assert!(!other_epoch.recovered);
    assert_eq!(other_epoch.top, top);
    // Age: at tick 108 entries from ticks 5..7 are older than 100 ticks.
    let (_, h) = s.history("c", 0, 100, false, 108, 100);
    assert_eq!(h.iter().map(|e| e.offset).collect::<Vec<_>>(), [9, 10]);
    assert!(
        !s.recover(
            "c",
            Position {
                epoch: e.epoch,
                offset: 6
            },
            108,
            100
        )
        .recovered
    );
    assert!(
        s.recover(
            "c",
            Position {
                epoch: e.epoch,
                offset: 8
            },
            108,
            100
        )
        .recovered
    );
}

#[test]
fn seeded_streams_continue_their_epoch_keys_and_history() {
    use crate::journal::SeedEntry;
    let default = memory_only(64, 1000);
    let ns = [namespace("chat", Durability::Sync, 3, 10_000)];
    let mut s = Streams::with_policies(3, Arc::new(Policies::new(default, &ns, 10)));
    let entry = |offset: u64, key: Option<&str>| SeedEntry {
        offset,
        age_ms: 100,
        format: Format::Json,
        data: Bytes::from(offset.to_string()),
        meta: None,
        key: key.map(Box::from),
        from: None,
        author: None,
        event: None,
        revises: None,
        revised: None,
    };
    s.seed(
        SeedStream {
            channel: "chat:1".into(),
            epoch: Some(77),
            offset: 9,
            entries: vec![entry(8, None), entry(9, Some("k"))],
            dormant: false,
        },
        5,
        10,
    );
    s.seed(
        SeedStream {
            channel: "chat:lost".into(),
            epoch: None,
            offset: 4,
            entries: Vec::new(),
            dormant: false,
        },
        5,
        10,
    );
    assert_eq!(s.policy_of("chat:1").durability, Durability::Sync);
    assert_eq!(s.policy_of("other").durability, Durability::None);
    assert_eq!(
        s.current("chat:1"),
        Some(Position {
            epoch: 77,
            offset: 9
        })
    );
    assert!(s.current("chat:lost").is_none(), "a new epoch on first use");
    assert_eq!(
        s.dedupe("chat:1", "k", 5, 100),
        Some(Position {
            epoch: 77,
            offset: 9
        })
    );
    let (p, policy) = s.next_in("chat:1", 6);
    assert_eq!((p.epoch, p.offset), (77, 10));
    assert_eq!(s.policies.get(policy).keep, 3);
    let r = s.recover(
        "chat:1",
        Position {
            epoch: 77,
            offset: 7,
        },
        6,
        1000,
    );
    assert!(r.recovered);
    assert_eq!(r.top.offset, 9, "offset 10 is not released yet");
    assert_eq!(r.publications.len(), 2);
}

#[test]
fn owners_spread_and_are_stable() {
    let mut counts = [0; 4];
    for i in 0..4000 {
        counts[owner(&format!("room:{i}"), 4) as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    assert_eq!(owner("room:1", 4), owner("room:1", 4));
    assert_eq!(owner("anything", 1), 0);
}

fn big_entry(offset: u64, tick: u32, bytes: usize) -> Entry {
    Entry {
        offset,
        tick,
        data: Bytes::from(vec![b'x'; bytes]),
        meta: None,
        format: Format::Json,
        from: None,
        author: None,
        event: None,
        revises: None,
        revised: None,
    }
}

/// Issue 16, item 1: 60 KB payloads to ever-new channels stay within the budget,
/// oldest evicted first across channels, each channel keeping a contiguous run up to
/// its top (so recovery is exact); expired history is freed by the sweep even on a
/// channel that never publishes again.
#[test]
fn retained_bytes_stay_within_the_budget_oldest_first() {
    let mut s = Streams::new(1);
    let budget = 1 << 20;
    s.set_history_budget(budget);
    for i in 0..200u32 {
        let channel = format!("room:h{i}");
        let p = s.next(&channel, i);
        s.retain(&channel, big_entry(p.offset, i, 60_000), 64, u32::MAX);
        assert!(s.history_bytes() <= budget, "{} at {i}", s.history_bytes());
    }
    let per = 60_000 + budget::ENTRY_OVERHEAD;
    assert_eq!(s.history_bytes(), (budget / per) * per);
    assert_eq!(s.history_evicted(), 200 - (budget / per) as u64);
    // The newest channels kept theirs, the oldest lost theirs.
    assert_eq!(
        s.history("room:h199", 0, 10, false, 200, u32::MAX).1.len(),
        1
    );
    assert!(s
        .history("room:h0", 0, 10, false, 200, u32::MAX)
        .1
        .is_empty());

    // One busy channel: what it keeps is its newest publications, contiguous.
    for t in 0..100u32 {
        let p = s.next("room:busy", 300 + t);
        s.retain(
            "room:busy",
            big_entry(p.offset, 300 + t, 60_000),
            64,
            u32::MAX,
        );
    }
    let (top, kept) = s.history("room:busy", 0, 100, false, 400, u32::MAX);
    assert_eq!(kept.last().unwrap().offset, top.offset);
    assert!(kept.windows(2).all(|w| w[1].offset == w[0].offset + 1));
    let first = kept[0].offset;
    let r = s.recover(
        "room:busy",
        Position {
            epoch: top.epoch,
            offset: first - 1,
        },
        400,
        u32::MAX,
    );
    assert!(r.recovered);
    let r = s.recover(
        "room:busy",
        Position {
            epoch: top.epoch,
            offset: first - 2,
        },
        400,
        u32::MAX,
    );
    assert!(
        !r.recovered,
        "an evicted publication is not claimed as recovered"
    );
}

#[test]
fn the_sweep_frees_expired_history_of_quiet_channels() {
    let mut s = Streams::with_policies(
        1,
        Arc::new(Policies::single(Policy {
            durability: Durability::None,
            keep: 64,
            ttl: 10,
            max_bytes: 0,
            edits: false,
        })),
    );
    for i in 0..50u32 {
        let channel = format!("room:q{i}");
        let p = s.next(&channel, 0);
        s.retain(&channel, big_entry(p.offset, 0, 1000), 64, 10);
    }
    assert_eq!(s.history_bytes(), 50 * (1000 + budget::ENTRY_OVERHEAD));
    s.sweep(11, 1000, 1000, 1000);
    assert_eq!(
        s.history_bytes(),
        0,
        "expired, freed without a new publication"
    );
    assert_eq!(s.len(), 50, "positions are kept until stream_idle_ms");
    s.sweep(2000, 1000, 1000, 1000);
    assert_eq!(s.len(), 0);
}

#[test]
fn a_channel_over_its_max_bytes_is_full_until_older_entries_go() {
    let one = budget::ENTRY_OVERHEAD + 1; // entries 1..=9 carry one byte
    let capped = Policy {
        durability: Durability::None,
        keep: 4,
        ttl: 100,
        max_bytes: 3 * one,
        edits: false,
    };
    let mut s = Streams::with_policies(1, Arc::new(Policies::single(capped)));
    for tick in 0..3 {
        assert!(!s.over_max_bytes("c", &capped, 1), "entry {tick} fits");
        let p = s.next("c", tick);
        s.retain("c", entry(p.offset, tick), 4, 100);
    }
    assert!(s.over_max_bytes("c", &capped, 1), "three held: full");
    assert!(!s.over_max_bytes("other", &capped, 1), "per channel");
    let unlimited = Policy {
        max_bytes: 0,
        ..capped
    };
    assert!(!s.over_max_bytes("c", &unlimited, 1 << 30));
    // The sweep frees expired entries, and with them room.
    s.sweep(102, u32::MAX, 100, 10);
    assert!(!s.over_max_bytes("c", &capped, 1), "the oldest expired");
    // The budget's evictions count too.
    s.set_history_budget(one);
    let p = s.next("c", 103);
    s.retain("c", entry(p.offset, 103), 4, 100);
    // One entry held (the budget evicted the others): exactly room for two entries'
    // worth of bytes more.
    assert!(!s.over_max_bytes("c", &capped, one + 1));
    assert!(s.over_max_bytes("c", &capped, one + 2));
}

#[test]
fn past_max_streams_the_least_recently_used_forgettable_one_goes() {
    let default = memory_only(4, 1000);
    let ns = [namespace("ledger", Durability::Sync, 4, 10_000)];
    let mut s = Streams::with_policies(3, Arc::new(Policies::new(default, &ns, 10)));
    s.set_max_streams(8);
    // A durable stream that retains a publication is never forgotten for room.
    let p = s.next("ledger:keep", 0);
    s.retain("ledger:keep", entry(p.offset, 0), 4, 1000);
    for i in 1..200u32 {
        let channel = format!("room:{i}");
        let p = s.next(&channel, i);
        s.show(&channel, p.offset);
        assert!(s.len() <= 8, "{} streams after {i}", s.len());
    }
    assert_eq!(s.streams_evicted(), 200 - 8);
    assert!(s.current("ledger:keep").is_some());
    assert!(s.current("room:199").is_some(), "the newest stays");
    // The sample picks the idlest it sees: the survivors are recent ones.
    let oldest_kept = (1..200)
        .find(|i| s.current(&format!("room:{i}")).is_some())
        .unwrap();
    assert!(oldest_kept > 150, "room:{oldest_kept} survived");
    // A stream waiting for the store (shown behind offset) is not forgettable either.
    let mut s = Streams::new(4);
    s.set_max_streams(2);
    s.next("a", 0);
    s.next("b", 1);
    s.next("c", 2);
    assert_eq!(s.len(), 3, "nothing forgettable: the map grows for now");
    assert_eq!(s.streams_evicted(), 0);
}

/// A stream of `n` publications at ticks 0.. keeping the newest `keep` in memory.
fn paged_stream(n: u64, keep: usize) -> Streams {
    let mut s = Streams::new(3);
    for i in 0..n {
        let p = s.next("c", i as u32);
        s.retain("c", entry(p.offset, i as u32), keep, u32::MAX);
    }
    s
}

fn clock(now: u32) -> PageClock {
    // Tick t is at 1,000,000 + 10 t ms.
    PageClock {
        now,
        now_ms: 1_000_000 + 10 * u64::from(now),
        tick_ms: 10,
    }
}

fn offsets(p: &Paged) -> (Vec<u64>, bool) {
    match p {
        Paged::Memory { entries, more, .. } => (entries.iter().map(|e| e.offset).collect(), *more),
        other => panic!("not from memory: {other:?}"),
    }
}

#[test]
fn pages_within_memory_are_answered_there_and_deeper_ones_go_to_the_store() {
    use switchboard_protocol::history::Page;
    let mut s = paged_stream(100, 10);
    let (now, stored) = (100, true);
    let newest = Page {
        reverse: true,
        limit: 4,
        ..Page::default()
    };
    let p = s.page("c", &newest, stored, clock(now), u32::MAX);
    assert_eq!(offsets(&p), (vec![100, 99, 98, 97], true));
    // Newest first past the oldest kept (91): the store, with what memory holds.
    let deeper = Page {
        before: Some(93),
        limit: 4,
        ..newest
    };
    match s.page("c", &deeper, stored, clock(now), u32::MAX) {
        Paged::Store { page, kept, .. } => {
            assert_eq!(page.epoch, s.current("c").map(|t| t.epoch));
            assert_eq!(kept.iter().map(|e| e.offset).collect::<Vec<_>>(), [91, 92]);
        }
        other => panic!("{other:?}"),
    }
    // Oldest first from the start: the store; from inside memory: memory, to the end.
    let oldest = Page {
        limit: 4,
        ..Page::default()
    };
    assert!(matches!(
        s.page("c", &oldest, stored, clock(now), u32::MAX),
        Paged::Store { .. }
    ));
    let inside = Page {
        after: 95,
        ..oldest
    };
    assert_eq!(
        offsets(&s.page("c", &inside, stored, clock(now), u32::MAX)),
        (vec![96, 97, 98, 99], true)
    );
    let last = Page {
        after: 97,
        ..oldest
    };
    assert_eq!(
        offsets(&s.page("c", &last, stored, clock(now), u32::MAX)),
        (vec![98, 99, 100], false)
    );
    // By time: tick 95 is 1,000,950 ms; after the oldest kept's time, memory answers.
    let recent = Page {
        from_ms: Some(1_000_950),
        ..oldest
    };
    assert_eq!(
        offsets(&s.page("c", &recent, stored, clock(now), u32::MAX)).0,
        [96, 97, 98, 99]
    );
    let older = Page {
        from_ms: Some(1_000_500),
        ..oldest
    };
    assert!(matches!(
        s.page("c", &older, stored, clock(now), u32::MAX),
        Paged::Store { .. }
    ));
    // A memory-only namespace answers from memory whatever it lost.
    let (all, more) = offsets(&s.page("c", &oldest, false, clock(now), u32::MAX));
    assert_eq!((all, more), (vec![91, 92, 93, 94], true));
}

#[test]
fn pages_outside_the_stream_are_refused() {
    use switchboard_protocol::history::Page;
    let mut s = paged_stream(5, 10);
    let refused = |s: &mut Streams, page: Page, stored| match s.page(
        "c",
        &page,
        stored,
        clock(5),
        u32::MAX,
    ) {
        Paged::Refused(why) => why,
        other => panic!("{other:?}"),
    };
    let why = refused(
        &mut s,
        Page {
            after: 6,
            ..Page::default()
        },
        true,
    );
    assert_eq!(why, "'after' 6 is beyond the channel's latest offset 5");
    let why = refused(
        &mut s,
        Page {
            before: Some(7),
            reverse: true,
            ..Page::default()
        },
        true,
    );
    assert_eq!(why, "'before' 7 is beyond the channel's next offset 6");
    let other = Page {
        epoch: Some(1),
        ..Page::default()
    };
    assert!(
        refused(&mut s, other, false).starts_with("epoch 0000000000000001 is not the channel's")
    );
    // A stored namespace may hold an older epoch: the store decides.
    assert!(matches!(
        s.page("c", &other, true, clock(5), u32::MAX),
        Paged::Store { .. }
    ));
    // Empty bounds: an empty page, not an error.
    let empty = Page {
        after: 3,
        before: Some(4),
        ..Page::default()
    };
    assert_eq!(
        offsets(&s.page("c", &empty, true, clock(5), u32::MAX)),
        (vec![], false)
    );
}

#[test]
fn a_stored_stream_put_to_rest_continues_its_epoch() {
    let default = memory_only(8, 1000);
    let ns = [namespace("chat", Durability::Sync, 8, 100)];
    let mut s = Streams::with_policies(1, Arc::new(Policies::new(default, &ns, 10)));
    let p = s.next("chat:a", 0);
    s.retain("chat:a", entry(p.offset, 0), 8, 10);
    let q = s.next("room:b", 0);
    s.show("room:b", 1);
    assert_eq!(s.sweep(100, 50, 50, 10), 2, "both idle");
    assert_eq!(s.dormant_len(), 1, "only the stored one keeps its position");
    let again = s.next("chat:a", 101);
    assert_eq!(
        again,
        Position {
            epoch: p.epoch,
            offset: 2
        }
    );
    assert_eq!(s.dormant_len(), 0);
    assert_ne!(
        s.next("room:b", 101).epoch,
        q.epoch,
        "memory-only: a new epoch"
    );
    // Read back from the store as dormant: a position, no stream until used.
    let rested = SeedStream {
        channel: "chat:z".into(),
        epoch: Some(9),
        offset: 41,
        entries: Vec::new(),
        dormant: true,
    };
    s.seed(rested, 0, 10);
    assert_eq!(s.current("chat:z"), None);
    assert_eq!(
        s.touch("chat:z", 5),
        Position {
            epoch: 9,
            offset: 41
        }
    );
    assert_eq!(s.next("chat:z", 5).offset, 42);
}
