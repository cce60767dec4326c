//! Locating the events a component fails on, within a fixed budget of guest time.
//!
//! Why it exists: when a component fails a batch, the host must find the event(s) responsible
//! (to name them under `on_poison = pause`, to dead-letter exactly them under `skip`). Bisecting
//! the whole batch costs about 2N calls when every event fails, and a call can run for its whole
//! time limit: a hostile component would hold a guest thread for minutes per batch. [`Search`]
//! decides which range of the batch to call next and stops when its budget is spent.
//!
//! The search goes from left to right. After the whole batch failed it tries the first event
//! alone, then ranges that double after every success (1, 2, 4 … events); a failing range is
//! halved (or cut just before the event a `projection-error` names) until the failing event is
//! alone. Everything left of the current position is *settled*: its good events' mutations are
//! kept, its poison events are known. When the budget runs out, the settled prefix is applied and
//! the checkpoint moves to it; the next batch starts at the unresolved range, sized to what the
//! search had narrowed it to, so no call is repeated for nothing.
//!
//! Architecture invariant: per batch evaluation, guest time is at most the whole batch's call plus
//! [`SEARCH_BUDGET_CALLS`] × the call limit, and at most [`SEARCH_MAX_CALLS`] calls, whatever the
//! batch size; and every evaluation settles at least one event or names the first poison event,
//! so a projection always makes progress. API boundary: it knows neither the component nor the
//! database; the worker runs the calls and reports their outcome.

use std::ops::Range;
use std::time::Duration;

use super::config::OnPoison;

/// Guest time the search may spend after the whole batch failed, in units of the call limit.
pub const SEARCH_BUDGET_CALLS: u32 = 3;
/// Most calls one search makes (cheap failures: rejections, invalid mutations).
pub const SEARCH_MAX_CALLS: usize = 64;

/// Where a search stands.
#[derive(Debug)]
pub struct Search {
    len: usize,
    /// Events `[0, settled)` are settled.
    settled: usize,
    /// Size of the next range to call.
    chunk: usize,
    calls: usize,
    spent: Duration,
    budget: Duration,
    call_limit: Duration,
    on_poison: OnPoison,
    /// Poison events found (index in the batch, why), under `skip`.
    poison: Vec<(usize, String)>,
    /// The first poison event under `pause`: the search ends there.
    paused_at: Option<(usize, String)>,
    /// Set when the kept output reached the call's output limits: the rest waits for the next
    /// batch.
    full: bool,
}

impl Search {
    /// A search over a batch of `len` events whose whole call just failed with `message`
    /// (`hint`: the index of the event the component named, if any).
    pub fn after_whole_failure(
        len: usize,
        call_limit: Duration,
        on_poison: OnPoison,
        message: String,
        hint: Option<usize>,
    ) -> Self {
        let mut search = Self {
            len,
            settled: 0,
            chunk: 1,
            calls: 0,
            spent: Duration::ZERO,
            budget: call_limit.saturating_mul(SEARCH_BUDGET_CALLS),
            call_limit,
            on_poison,
            poison: Vec::new(),
            paused_at: None,
            full: false,
        };
        // The whole call is not part of the search's budget, and not one of its calls.
        search.narrow(0..len, message, hint);
        search
    }

    /// The range to call next, or `None` when the search is over (everything settled, the first
    /// poison event found under `pause`, the output full, or the budget spent).
    pub fn next_range(&self) -> Option<Range<usize>> {
        if self.settled >= self.len || self.paused_at.is_some() || self.full {
            return None;
        }
        if self.calls >= SEARCH_MAX_CALLS {
            return None;
        }
        // The first call is always made (so every search settles something); a later one only
        // if a call running to its limit still fits the budget.
        if self.calls > 0 && self.spent.saturating_add(self.call_limit) > self.budget {
            return None;
        }
        Some(self.settled..self.len.min(self.settled + self.chunk))
    }

    /// `range` succeeded in `elapsed`; the caller kept its output.
    pub fn succeeded(&mut self, range: Range<usize>, elapsed: Duration) {
        self.calls += 1;
        self.spent = self.spent.saturating_add(elapsed);
        self.settled = range.end;
        self.chunk = self.chunk.saturating_mul(2).min(self.len.max(1));
    }

    /// `range` succeeded but its output would exceed what one call may return: the settled
    /// prefix is applied now, the rest in the next batch.
    pub fn output_full(&mut self, elapsed: Duration) {
        self.calls += 1;
        self.spent = self.spent.saturating_add(elapsed);
        self.full = true;
    }

    /// `range` failed with `message` in `elapsed` (`hint`: the event the component named).
    pub fn failed(
        &mut self,
        range: Range<usize>,
        elapsed: Duration,
        message: String,
        hint: Option<usize>,
    ) {
        self.calls += 1;
        self.spent = self.spent.saturating_add(elapsed);
        self.narrow(range, message, hint);
    }

    fn narrow(&mut self, range: Range<usize>, message: String, hint: Option<usize>) {
        if range.len() <= 1 {
            match self.on_poison {
                OnPoison::Pause => self.paused_at = Some((range.start, message)),
                OnPoison::Skip => {
                    self.poison.push((range.start, message));
                    self.settled = range.end;
                    self.chunk = 1;
                }
            }
            return;
        }
        self.chunk = match hint {
            Some(index) if index > range.start && index < range.end => index - range.start,
            Some(index) if index == range.start => 1,
            // A whole batch that failed: try its first event alone, then grow.
            _ if range.start == 0 && range.end == self.len && self.calls == 0 => 1,
            _ => range.len() / 2,
        };
    }

    /// Events `[0, settled)` are settled.
    pub fn settled(&self) -> usize {
        self.settled
    }

    /// The size the unresolved rest was narrowed to: the next batch's size.
    pub fn narrowed(&self) -> usize {
        self.chunk.max(1)
    }

    /// Poison events found under `skip`.
    pub fn take_poison(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.poison)
    }

    /// The first poison event under `pause`.
    pub fn paused_at(&self) -> Option<&(usize, String)> {
        self.paused_at.as_ref()
    }

    /// Calls the search made.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Guest time of the search's calls.
    pub fn spent(&self) -> Duration {
        self.spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(100);

    /// Runs a search to its end over `len` events where `fails(range)` says whether a call on
    /// that range fails and `cost(range)` how long it takes. Returns the search and the ranges
    /// called, whole call included.
    fn run(
        len: usize,
        on_poison: OnPoison,
        fails: impl Fn(&Range<usize>) -> bool,
        cost: impl Fn(&Range<usize>, bool) -> Duration,
    ) -> (Search, Vec<Range<usize>>) {
        let mut called = Vec::new();
        called.push(0..len);
        assert!(fails(&(0..len)), "the whole batch must fail");
        let mut search = Search::after_whole_failure(len, LIMIT, on_poison, "x".into(), None);
        while let Some(range) = search.next_range() {
            called.push(range.clone());
            let failed = fails(&range);
            let elapsed = cost(&range, failed);
            if failed {
                search.failed(range, elapsed, "x".into(), None);
            } else {
                search.succeeded(range, elapsed);
            }
        }
        (search, called)
    }

    fn spins(range: &Range<usize>, failed: bool) -> Duration {
        let _ = range;
        if failed {
            LIMIT
        } else {
            Duration::from_millis(1)
        }
    }

    #[test]
    fn every_event_spinning_under_pause_costs_two_calls() {
        let (search, called) = run(200, OnPoison::Pause, |_| true, spins);
        assert_eq!(called, [0..200, 0..1]);
        assert_eq!(search.paused_at().map(|p| p.0), Some(0));
        assert_eq!(search.settled(), 0);
    }

    #[test]
    fn guest_time_is_bounded_whatever_the_batch_size() {
        for len in [2, 10, 200, 5_000, 100_000] {
            for poison_every in [1, 2, 3, 7, 100, 1_000] {
                for on_poison in [OnPoison::Pause, OnPoison::Skip] {
                    let fails = |r: &Range<usize>| r.clone().any(|i| i % poison_every == 0);
                    let (search, called) = run(len, on_poison, fails, spins);
                    let failing_calls = called.iter().filter(|r| fails(r)).count() as u32;
                    assert!(
                        search.spent() <= LIMIT * SEARCH_BUDGET_CALLS,
                        "{len}/{poison_every}: {:?}",
                        search.spent()
                    );
                    assert!(failing_calls <= 1 + SEARCH_BUDGET_CALLS, "{called:?}");
                    assert!(search.calls() <= SEARCH_MAX_CALLS);
                    // Progress: something settled, or the first poison named.
                    assert!(search.settled() > 0 || search.paused_at().is_some());
                }
            }
        }
    }

    #[test]
    fn cheap_failures_are_isolated_exactly_under_skip() {
        // Events 3 and 9 fail quickly.
        let fails = |r: &Range<usize>| r.contains(&3) || r.contains(&9);
        let (mut search, _) = run(12, OnPoison::Skip, fails, |_, _| Duration::from_millis(1));
        assert_eq!(search.settled(), 12);
        let poison: Vec<usize> = search.take_poison().into_iter().map(|p| p.0).collect();
        assert_eq!(poison, [3, 9]);
    }

    #[test]
    fn repeated_batches_always_settle_the_log() {
        // Simulates the worker: each batch starts where the last settled, sized by the narrowed
        // hint, until the log of 1,000 events (every 37th spinning) is through.
        let poison = |i: usize| i % 37 == 5;
        let total = 1_000;
        let mut start = 0;
        let mut size = 200;
        let mut dead = Vec::new();
        let mut batches = 0;
        while start < total {
            batches += 1;
            assert!(batches < 10_000, "no progress");
            let len = size.min(total - start);
            let range_fails = |r: &Range<usize>| r.clone().any(|i| poison(start + i));
            if !range_fails(&(0..len)) {
                start += len;
                size = (size * 2).min(200);
                continue;
            }
            let (mut search, _) = run(len, OnPoison::Skip, range_fails, spins);
            dead.extend(search.take_poison().into_iter().map(|(i, _)| start + i));
            assert!(search.settled() > 0);
            if search.settled() < len {
                size = search.narrowed();
            }
            start += search.settled();
        }
        let expected: Vec<usize> = (0..total).filter(|&i| poison(i)).collect();
        assert_eq!(dead, expected);
    }

    #[test]
    fn a_named_event_is_tried_right_away() {
        let mut search =
            Search::after_whole_failure(100, LIMIT, OnPoison::Pause, "x".into(), Some(40));
        assert_eq!(search.next_range(), Some(0..40));
        search.succeeded(0..40, Duration::from_millis(1));
        assert_eq!(search.next_range(), Some(40..100));
        search.failed(40..100, Duration::from_millis(1), "x".into(), Some(40));
        assert_eq!(search.next_range(), Some(40..41));
        search.failed(40..41, Duration::from_millis(1), "boom".into(), Some(40));
        assert_eq!(search.paused_at(), Some(&(40, "boom".to_owned())));
        assert_eq!(search.settled(), 40);
    }
}
