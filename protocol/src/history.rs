//! A page of a channel's history: what a `history` request asks (bounds by position
//! and by time, direction, size) and the cursor that continues it.
//!
//! Owns [`Page`], its bounds checks, and the cursor's text form. A cursor is opaque to
//! clients but not secret: it names the epoch, the bounds still to read, the direction
//! and a tag of the channel it was issued for, so a cursor used on another channel, or
//! one that was altered, is refused with a clear error instead of reading the wrong
//! range. Does not own where pages are read from (the engine's memory, the store).

/// Publications in a page unless the request says otherwise.
pub const DEFAULT_PAGE: u32 = 100;
/// Most publications in one page.
pub const MAX_PAGE: u32 = 1000;

/// What a `history` request asks: publications of one epoch of a channel within
/// bounds, oldest first (or newest first with `reverse`), at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// The epoch the offsets belong to; `None`: the channel's current one.
    pub epoch: Option<u64>,
    /// Only publications after this offset (0: from the oldest kept).
    pub after: u64,
    /// Only publications before this offset; `None`: up to the latest.
    pub before: Option<u64>,
    /// Only publications stored at or after this time (Unix milliseconds).
    pub from_ms: Option<u64>,
    /// Only publications stored at or before this time (Unix milliseconds).
    pub to_ms: Option<u64>,
    /// Most publications in the page (1 to [`MAX_PAGE`]).
    pub limit: u32,
    /// Newest first: the page holds the newest publications within the bounds.
    pub reverse: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            epoch: None,
            after: 0,
            before: None,
            from_ms: None,
            to_ms: None,
            limit: DEFAULT_PAGE,
            reverse: false,
        }
    }
}

impl Page {
    /// Whether a publication at `offset` lies within the page's position bounds.
    #[inline]
    pub fn admits(&self, offset: u64) -> bool {
        offset > self.after && self.before.is_none_or(|b| offset < b)
    }

    /// Whether a publication stored at `ms` lies within the page's time bounds.
    #[inline]
    pub fn admits_time(&self, ms: u64) -> bool {
        self.from_ms.is_none_or(|f| ms >= f) && self.to_ms.is_none_or(|t| ms <= t)
    }

    /// Whether the bounds can hold anything at all.
    pub fn is_empty_range(&self) -> bool {
        self.before
            .is_some_and(|b| b <= self.after.saturating_add(1))
            || matches!((self.from_ms, self.to_ms), (Some(f), Some(t)) if f > t)
    }

    /// The page that follows one whose last publication was at `last`, in epoch
    /// `epoch`: the same bounds, narrowed past `last` in the page's direction.
    pub fn next(&self, epoch: u64, last: u64) -> Page {
        let mut p = *self;
        p.epoch = Some(epoch);
        if self.reverse {
            p.before = Some(last);
        } else {
            p.after = last;
        }
        p
    }

    /// The cursor text of this page for `channel` (it must name its epoch).
    pub fn cursor(&self, channel: &str) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(80);
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let _ = write!(
            s,
            "1.{:016x}.{}.{}.{}.{}.{}.{:08x}",
            self.epoch.unwrap_or(0),
            self.after,
            opt(self.before),
            opt(self.from_ms),
            opt(self.to_ms),
            if self.reverse { 'r' } else { 'f' },
            tag(channel),
        );
        s
    }

    /// The page a cursor for `channel` continues, with `limit` publications.
    pub fn from_cursor(text: &str, channel: &str, limit: u32) -> Result<Page, &'static str> {
        const UNKNOWN: &str = "unknown cursor: pass 'cursor' exactly as a history reply gave it";
        let mut parts = text.split('.');
        let mut next = || parts.next().ok_or(UNKNOWN);
        if next()? != "1" {
            return Err(UNKNOWN);
        }
        let epoch = next()?;
        if epoch.len() != 16 {
            return Err(UNKNOWN);
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| UNKNOWN)?;
        let num = |s: &str| s.parse::<u64>().map_err(|_| UNKNOWN);
        let opt = |s: &str| {
            if s.is_empty() {
                Ok(None)
            } else {
                num(s).map(Some)
            }
        };
        let after = num(next()?)?;
        let before = opt(next()?)?;
        let from_ms = opt(next()?)?;
        let to_ms = opt(next()?)?;
        let reverse = match next()? {
            "r" => true,
            "f" => false,
            _ => return Err(UNKNOWN),
        };
        let tagged = u32::from_str_radix(next()?, 16).map_err(|_| UNKNOWN)?;
        if parts.next().is_some() {
            return Err(UNKNOWN);
        }
        if tagged != tag(channel) {
            return Err("the cursor belongs to another channel");
        }
        Ok(Page {
            epoch: Some(epoch),
            after,
            before,
            from_ms,
            to_ms,
            limit,
            reverse,
        })
    }
}

/// Why a page size is refused.
pub const LIMIT: &str = "'limit' must be an integer from 1 to 1000";

/// The fields of a history request as sent (`history` command, `message:history`,
/// `GET /api/history`), each already of the right type.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageFields<'a> {
    /// The first form of the bound: after it going forward, before it going back.
    pub since: Option<u64>,
    /// Only publications after this offset.
    pub after: Option<u64>,
    /// Only publications before this offset.
    pub before: Option<u64>,
    /// The epoch the offsets belong to, as 16 hex digits.
    pub epoch: Option<&'a str>,
    /// Only publications stored at or after this time.
    pub from_ms: Option<u64>,
    /// Only publications stored at or before this time.
    pub to_ms: Option<u64>,
    /// Page size.
    pub limit: Option<u64>,
    /// Newest first.
    pub reverse: Option<bool>,
    /// Continue the page a reply's cursor names.
    pub cursor: Option<&'a str>,
}

impl PageFields<'_> {
    /// The page these fields ask of `channel`, or why they are refused.
    pub fn page(&self, channel: &str) -> Result<Page, &'static str> {
        let limit = match self.limit {
            None => DEFAULT_PAGE,
            Some(n) if (1..=u64::from(MAX_PAGE)).contains(&n) => n as u32,
            Some(_) => return Err(LIMIT),
        };
        if let Some(cursor) = self.cursor {
            let others = [
                self.since.is_some(),
                self.after.is_some(),
                self.before.is_some(),
                self.epoch.is_some(),
                self.from_ms.is_some(),
                self.to_ms.is_some(),
                self.reverse.is_some(),
            ];
            if others.contains(&true) {
                return Err("'cursor' continues a page: send it with 'limit' only");
            }
            return Page::from_cursor(cursor, channel, limit);
        }
        let reverse = self.reverse.unwrap_or(false);
        let (mut after, mut before) = (self.after, self.before);
        match self.since {
            None | Some(0) => {}
            Some(_) if after.is_some() || before.is_some() => {
                return Err("'since' cannot be combined with 'after' or 'before'")
            }
            Some(s) if reverse => before = Some(s),
            Some(s) => after = Some(s),
        }
        if before == Some(0) {
            return Err("'before' must be an offset from 1");
        }
        let epoch = match self.epoch {
            None => None,
            Some(hex) if hex.len() == 16 => {
                Some(u64::from_str_radix(hex, 16).map_err(|_| "'epoch' must be 16 hex digits")?)
            }
            Some(_) => return Err("'epoch' must be 16 hex digits"),
        };
        Ok(Page {
            epoch,
            after: after.unwrap_or(0),
            before,
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            limit,
            reverse,
        })
    }
}

/// A 32-bit tag of a channel name (FNV-1a), carried in cursors.
fn tag(channel: &str) -> u32 {
    channel.bytes().fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_continues_the_page_it_came_from() {
        let p = Page {
            epoch: Some(0xabc),
            after: 5,
            before: Some(900),
            from_ms: Some(1_700_000_000_000),
            to_ms: None,
            limit: 50,
            reverse: true,
        };
        let next = p.next(0xabc, 850);
        let text = next.cursor("chat:a");
        assert_eq!(Page::from_cursor(&text, "chat:a", 50), Ok(next));
        assert_eq!(next.before, Some(850));
        let fwd = Page {
            reverse: false,
            ..p
        }
        .next(0xabc, 60);
        assert_eq!(fwd.after, 60);
        assert_eq!(
            Page::from_cursor(&fwd.cursor("chat:a"), "chat:a", 50),
            Ok(fwd)
        );
    }

    #[test]
    fn a_foreign_or_altered_cursor_is_refused() {
        let text = Page::default().next(7, 3).cursor("chat:a");
        assert_eq!(
            Page::from_cursor(&text, "chat:b", 10),
            Err("the cursor belongs to another channel")
        );
        for bad in [
            "",
            "garbage",
            "2.0000000000000007.3....f.00000000",
            &text.replace(".f.", ".x."),
            &text.replace("0000000000000007", "7"),
            &format!("{text}.1"),
            &text.replacen(".3.", ".-3.", 1),
        ] {
            assert!(
                Page::from_cursor(bad, "chat:a", 10)
                    .unwrap_err()
                    .starts_with("unknown cursor"),
                "{bad}"
            );
        }
    }

    #[test]
    fn bounds_admit_what_lies_between_them() {
        let p = Page {
            after: 3,
            before: Some(6),
            from_ms: Some(10),
            to_ms: Some(20),
            ..Page::default()
        };
        assert_eq!((1..8).filter(|&o| p.admits(o)).collect::<Vec<_>>(), [4, 5]);
        assert!(p.admits_time(10) && p.admits_time(20) && !p.admits_time(21));
        assert!(!p.is_empty_range());
        assert!(Page {
            before: Some(4),
            ..p
        }
        .is_empty_range());
    }
}
