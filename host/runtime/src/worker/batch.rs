//! One batch of a track: read the events after the checkpoint, evaluate them with the
//! component (the whole batch in one call, or a bounded [`Search`] for the poison events when
//! it fails), apply what was settled with the dead letters, and move the checkpoint — in one
//! transaction on the lease connection. When PostgreSQL refuses a batch's data, it is applied
//! again range by range in savepoints so the refusal is attributed to its event.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use tracing::Instrument;

use super::{
    Active, BatchError, BatchHandler, BatchOutcome, PoisonEvent, Projector, Track, QUARANTINE_BURN,
    QUARANTINE_WINDOW,
};
use crate::guest_event::to_guest_event;
use crate::mutation;
use crate::poison_search::Search;
use crate::schema::ProjectionSchema;
use crate::{checkpoint, dead_letters};
use wallex_core::outbox;
use wallex_sandbox::engine::{wit, ComponentError, RuntimeLimits};
use wallex_telemetry::catalogue::{
    PROJECTOR_BATCHES_APPLIED_TOTAL, PROJECTOR_BATCH_DURATION_SECONDS, PROJECTOR_BATCH_EVENTS,
    PROJECTOR_DEAD_LETTERS_TOTAL, PROJECTOR_EVENTS_APPLIED_TOTAL,
    PROJECTOR_GUEST_CALL_DURATION_SECONDS,
};
use wallex_telemetry::context;

/// The events of a track's next batch, after `cursor`: a shadow's never past the live
/// checkpoint, a dry run's never past its cut.
async fn read_events(
    tx: &mut PgConnection,
    name: &str,
    track: Track,
    cursor: outbox::OutboxCursor,
    limit: u32,
) -> Result<Vec<outbox::OutboxEvent>, BatchError> {
    Ok(match track {
        Track::Shadow => {
            // Never past the live checkpoint: the worker holds it still (it runs both tracks),
            // so the shadow reaches exactly the live tables' state — the drift check's cut.
            let live = checkpoint::cursor(&mut *tx, name).await?;
            outbox::read_batch_until(&mut *tx, cursor, live, limit).await?
        }
        Track::DryRun(until) => outbox::read_batch_until(&mut *tx, cursor, until, limit).await?,
        Track::Live | Track::Rebuild => outbox::read_batch(&mut *tx, cursor, limit).await?,
    })
}

/// The guest batch of the outbox rows read: the events the projection subscribes to, and where
/// each of them is among the rows.
fn guest_batch(
    schema: &ProjectionSchema,
    events: &[outbox::OutboxEvent],
) -> (Vec<wit::Event>, Vec<usize>) {
    let mut rows_of = Vec::new();
    let batch = events
        .iter()
        .enumerate()
        .filter(|(_, e)| schema.subscriptions.includes(&e.event_type))
        .map(|(row, e)| {
            rows_of.push(row);
            to_guest_event(e)
        })
        .collect();
    (batch, rows_of)
}

/// A root span per batch that read events: it links to the requests whose events it applies
/// (their `traceparent`, kept in the events' metadata).
fn batch_span(
    name: &str,
    track: Track,
    cursor: outbox::OutboxCursor,
    events: &[outbox::OutboxEvent],
) -> tracing::Span {
    let span = tracing::debug_span!(
        parent: None,
        "projection.batch",
        projection = name,
        track = ?track,
        from_position = cursor.position,
        to_position = tracing::field::Empty,
        events = tracing::field::Empty,
        linked_traces = tracing::field::Empty,
    );
    if context::exporting() {
        let linked = context::link_all(
            &span,
            events.iter().filter_map(|e| {
                e.metadata
                    .get(context::TRACEPARENT)
                    .and_then(serde_json::Value::as_str)
            }),
        );
        span.record("linked_traces", linked);
    }
    span
}

/// The size hint of the next batch: one event after a pause, as narrowed by the search, or
/// growing back (doubling) to the configured size, where the hint is 0 again (no hint).
fn next_size_hint(paused: bool, narrowed: Option<usize>, hint: usize, batch_size: u32) -> usize {
    let next = match (paused, narrowed, hint) {
        (true, _, _) => 1,
        (false, Some(size), _) => size.max(1),
        (false, None, 0) => 0,
        (false, None, hint) => hint.saturating_mul(2),
    };
    if next >= batch_size as usize {
        0
    } else {
        next
    }
}

/// Runs the handler on (part of) a batch and validates its output against the limits and the
/// declaration.
fn attempt(
    handler: &dyn BatchHandler,
    schema: &ProjectionSchema,
    limits: &RuntimeLimits,
    batch: &[wit::Event],
) -> Result<(Vec<wit::Mutation>, mutation::Plan), BatchError> {
    let mutations = handler.handle(batch, limits)?;
    mutation::check_budget(&mutations, limits.max_mutations, limits.max_batch_bytes)?;
    let plan = mutation::plan(schema, &mutations)?;
    Ok((mutations, plan))
}

/// What a call on a range of the batch returned, and the guest time it took.
type CallOutcome = (
    Result<(Vec<wit::Mutation>, mutation::Plan), BatchError>,
    Duration,
);

/// What the evaluation of a batch settled (see [`Search`]).
struct Evaluation {
    /// Events `[0, settled)` of the guest batch are settled.
    settled: usize,
    /// What to apply for them (empty when applied range by range already).
    plan: mutation::Plan,
    /// Poison events (index in the guest batch, why) to dead-letter, under `skip`.
    poison: Vec<(usize, String)>,
    /// Under `pause`: the first poison event, reported after the prefix before it commits.
    paused: Option<BatchError>,
    /// Size the unresolved rest was narrowed to, when something is left.
    narrowed: Option<usize>,
}

impl Evaluation {
    fn whole(len: usize, plan: mutation::Plan) -> Self {
        Self {
            settled: len,
            plan,
            poison: Vec::new(),
            paused: None,
            narrowed: None,
        }
    }
}

/// The index in `batch` of the event a component's error names, if it names one.
fn named_event(error: &BatchError, batch: &[wit::Event]) -> Option<usize> {
    match error {
        BatchError::Component(ComponentError::Rejected {
            position: Some(position),
            ..
        }) => batch.iter().position(|e| e.global_position == *position),
        _ => None,
    }
}
impl Projector {
    /// Applies at most one live batch on `conn` (which must hold the lease); `pool` records a
    /// failure as soon as it is seen.
    pub async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
    ) -> Result<BatchOutcome, BatchError> {
        let active = self.active();
        self.apply_track(conn, pool, Track::Live, &active, self.config.batch_size)
            .await
    }

    /// Applies at most one batch of `track` with `version` on `conn`. When PostgreSQL refuses the
    /// data of a batch, it is applied again range by range (savepoints) so that the refusal is
    /// attributed to its event(s) like any failure of the component.
    pub async fn apply_track(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
        track: Track,
        version: &Active,
        batch_size: u32,
    ) -> Result<BatchOutcome, BatchError> {
        let first = self
            .apply_track_once(conn, pool, track, version, batch_size, false)
            .await;
        let reason = match first {
            Err(BatchError::Data(reason)) => reason,
            other => return other,
        };
        tracing::info!(
            projection = self.name(),
            ?track,
            %reason,
            "PostgreSQL refused the batch's data; applying it range by range to find the events"
        );
        self.apply_track_once(conn, pool, track, version, batch_size, true)
            .await
    }

    async fn apply_track_once(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
        track: Track,
        version: &Active,
        batch_size: u32,
        careful: bool,
    ) -> Result<BatchOutcome, BatchError> {
        let name = self.name();
        let key = match track {
            Track::Live => name.to_owned(),
            Track::Rebuild | Track::Shadow => checkpoint::rebuild_key(name),
            Track::DryRun(_) => checkpoint::dry_run_key(name),
        };
        let schema = &version.schema;
        let hint = self.size_hint[track.index()].load(Ordering::Relaxed);
        let limit = match u32::try_from(hint) {
            Ok(hint) if hint > 0 => hint.min(batch_size),
            _ => batch_size,
        };
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await?;
        if track != Track::Live || !self.config.synchronous_commit {
            // Projection tables are derived from the durable outbox: with an asynchronous commit
            // the checkpoint and the tables commit or vanish together, and a vanished batch is
            // applied again. It saves a WAL flush per batch.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        let cursor = checkpoint::cursor(&mut tx, &key).await?;
        let events = read_events(&mut tx, name, track, cursor, limit).await?;
        let read = started.elapsed();

        if events.is_empty() {
            tx.rollback().await?;
            if track == Track::Live {
                // Another process may have moved the checkpoint while it held the lease.
                self.progress.send_if_modified(|known| {
                    let changed = *known != cursor;
                    *known = cursor;
                    changed
                });
            }
            return Ok(BatchOutcome::default());
        }
        if track == Track::Live {
            // Tests freeze a worker here (holding its checkpoint) to check stall detection.
            wallex_core::failpoint::hit_for("projector-batch", name).await;
        }
        let span = batch_span(name, track, cursor, &events);
        async move {
            let (batch, rows_of) = guest_batch(schema, &events);
            let mut rows = 0;
            let mut reported = Vec::new();
            let (mut handled, mut applied) = (read, read);
            let mut consumed = events.len();
            let mut paused = None;
            let mut narrowed = None;
            if !batch.is_empty() {
                let batch = Arc::new(batch);
                let evaluation = self
                    .evaluate(&mut tx, pool, &key, version, &batch, careful)
                    .await?;
                handled = started.elapsed();
                paused = evaluation.paused;
                narrowed = evaluation.narrowed;
                if let Some(&row) = rows_of.get(evaluation.settled) {
                    // Only the rows before the first unsettled event are consumed.
                    consumed = row;
                }
                if consumed == 0 {
                    // Nothing settled: the first event is the poison (under `pause`).
                    tx.rollback().await?;
                    self.size_hint[track.index()].store(1, Ordering::Relaxed);
                    return Err(paused.unwrap_or(BatchError::Unsettled));
                }
                rows = match mutation::apply(&mut tx, &evaluation.plan).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        return Err(match mutation::data_rejection(&error) {
                            Some(reason) if !careful => BatchError::Data(reason),
                            _ => BatchError::Database(error),
                        })
                    }
                };
                reported = self
                    .settle_poison(&mut tx, track, &batch, &evaluation.poison)
                    .await?;
                applied = started.elapsed();
            }
            let last = events[consumed - 1].cursor();
            wallex_core::failpoint::hit("projection-after-apply").await;
            let counted = i64::try_from(consumed).unwrap_or(i64::MAX);
            checkpoint::advance_from(&mut tx, &key, &schema.namespace, cursor, last, counted)
                .await?;
            wallex_core::failpoint::hit("projection-before-commit").await;
            tx.commit().await?;
            wallex_core::failpoint::hit("projection-after-commit").await;
            let committed = started.elapsed();
            self.record_committed(track, consumed, last, committed);
            self.size_hint[track.index()].store(
                next_size_hint(paused.is_some(), narrowed, hint, batch_size),
                Ordering::Relaxed,
            );
            tracing::debug!(
                projection = name,
                ?track,
                events = consumed,
                rows,
                to = ?last,
                read_us = read.as_micros(),
                handled_us = handled.as_micros(),
                applied_us = applied.as_micros(),
                committed_us = committed.as_micros(),
                "batch applied"
            );
            if let Some(poison) = paused {
                return Err(poison);
            }
            Ok(BatchOutcome {
                consumed,
                more: events.len() >= limit as usize || consumed < events.len(),
                handled: rows_of.iter().take_while(|&&row| row < consumed).count(),
                rows,
                poison: reported,
            })
        }
        .instrument(span)
        .await
    }

    /// After a batch committed: its metrics (never a dry run's), its span's end position and
    /// size, and on the live track the events applied and the progress readers wait on.
    fn record_committed(
        &self,
        track: Track,
        consumed: usize,
        last: outbox::OutboxCursor,
        committed: Duration,
    ) {
        let name = self.name();
        let label = || ("projection", name.to_owned());
        if !self.dry_run {
            metrics::counter!(PROJECTOR_BATCHES_APPLIED_TOTAL, &[label()]).increment(1);
            metrics::histogram!(PROJECTOR_BATCH_DURATION_SECONDS, &[label()])
                .record(committed.as_secs_f64());
            metrics::histogram!(PROJECTOR_BATCH_EVENTS, &[label()]).record(consumed as f64);
        }
        let current = tracing::Span::current();
        current.record("to_position", last.position);
        current.record("events", consumed);
        if track == Track::Live {
            metrics::counter!(PROJECTOR_EVENTS_APPLIED_TOTAL, &[label()])
                .increment(consumed as u64);
            self.events_applied
                .fetch_add(consumed as u64, Ordering::Relaxed);
            self.progress.send_replace(last);
        }
    }

    /// The poison events a batch settled (under `skip`): dead-lettered in the batch's
    /// transaction, or, on a dry run's track, returned to be reported (the live dead letters
    /// stay the live version's).
    async fn settle_poison(
        &self,
        tx: &mut PgConnection,
        track: Track,
        batch: &[wit::Event],
        poison: &[(usize, String)],
    ) -> Result<Vec<PoisonEvent>, BatchError> {
        let name = self.name();
        let mut reported = Vec::new();
        for (index, error) in poison {
            let event = &batch[*index];
            if let Track::DryRun(_) = track {
                reported.push(PoisonEvent {
                    position: event.global_position,
                    event_id: event.event_id.clone(),
                    event_type: event.event_type.clone(),
                    error: error.clone(),
                });
                continue;
            }
            dead_letters::record(&mut *tx, name, event, error).await?;
            tracing::warn!(
                projection = name,
                ?track,
                position = event.global_position,
                event_id = %event.event_id,
                %error,
                "poison event skipped and dead-lettered (on_poison = skip)"
            );
        }
        if !self.dry_run {
            metrics::counter!(PROJECTOR_DEAD_LETTERS_TOTAL, "projection" => name.to_owned())
                .increment(poison.len() as u64);
        }
        Ok(reported)
    }

    /// Whether the component's calls run on the quarantine thread now.
    pub fn in_quarantine(&self) -> bool {
        if self.last_call_failed.load(Ordering::Relaxed) {
            return true;
        }
        let until = match self.quarantined_until.lock() {
            Ok(until) => *until,
            Err(poisoned) => *poisoned.into_inner(),
        };
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Guest time burned by failing calls since the last look, and resets it.
    pub(super) fn take_burned(&self) -> Duration {
        Duration::from_micros(self.burned_micros.swap(0, Ordering::Relaxed))
    }

    /// Calls the component on `range` of `batch` on a guest thread (the quarantine thread while
    /// it is quarantined) and keeps the books of failing calls.
    async fn call_range(
        &self,
        version: &Active,
        batch: &Arc<Vec<wit::Event>>,
        range: Range<usize>,
    ) -> Result<CallOutcome, BatchError> {
        let handler = Arc::clone(&version.handler);
        let schema = Arc::clone(&version.schema);
        let limits = version.policy.limits;
        let events = Arc::clone(batch);
        // The events travel to the guest thread by reference count (no copy).
        let job = move || {
            let started = Instant::now();
            let outcome = attempt(&*handler, &schema, &limits, &events[range]);
            (outcome, started.elapsed())
        };
        let (outcome, elapsed) = if self.in_quarantine() {
            self.guests.run_quarantined(job).await?
        } else {
            self.guests.run(job).await?
        };
        let failed = matches!(&outcome, Err(error) if error.is_component_failure());
        self.last_call_failed.store(failed, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if !self.dry_run {
            metrics::histogram!(
            PROJECTOR_GUEST_CALL_DURATION_SECONDS,
            "projection" => self.name().to_owned(),
            "outcome" => if failed { "failed" } else { "ok" }
            )
            .record(elapsed.as_secs_f64());
        }
        if failed {
            self.burned_micros.fetch_add(micros, Ordering::Relaxed);
            if elapsed >= QUARANTINE_BURN {
                let until = Instant::now() + QUARANTINE_WINDOW;
                match self.quarantined_until.lock() {
                    Ok(mut slot) => *slot = Some(until),
                    Err(poisoned) => *poisoned.into_inner() = Some(until),
                }
            }
        }
        Ok((outcome, elapsed))
    }

    /// Evaluates a batch: the whole of it in one call, or, when that fails because of the
    /// component, a bounded [`Search`] for the poison events. With `careful`, every range's
    /// statements run in a savepoint as soon as its call succeeds, so that a refusal by PostgreSQL
    /// counts as that range failing.
    async fn evaluate(
        &self,
        conn: &mut PgConnection,
        pool: &PgPool,
        key: &str,
        version: &Active,
        batch: &Arc<Vec<wit::Event>>,
        careful: bool,
    ) -> Result<Evaluation, BatchError> {
        let len = batch.len();
        let (whole, _) = self.call_range(version, batch, 0..len).await?;
        let failure = match whole {
            Ok((_, plan)) => {
                if !careful {
                    return Ok(Evaluation::whole(len, plan));
                }
                let rejected = mutation::apply_or_reject(conn, &plan).await?;
                match rejected {
                    None => return Ok(Evaluation::whole(len, mutation::Plan::default())),
                    Some(reason) => BatchError::Data(reason),
                }
            }
            Err(error) if error.is_component_failure() => error,
            Err(error) => return Err(error),
        };
        let message = failure.to_string();
        // Shown from the first failed call on, not only once the search is over.
        if let Err(error) = checkpoint::mark_failing(pool, key, &message).await {
            tracing::warn!(%error, "cannot record the failing call");
        }
        let policy = version.policy;
        let mut search = Search::after_whole_failure(
            len,
            policy.limits.call_timeout,
            policy.on_poison,
            message,
            named_event(&failure, batch),
        );
        let mut good: Vec<wit::Mutation> = Vec::new();
        let mut good_bytes = 0_usize;
        while let Some(range) = search.next_range() {
            let (outcome, elapsed) = self.call_range(version, batch, range.clone()).await?;
            match outcome {
                Ok((_, plan)) if careful => {
                    let rejected = mutation::apply_or_reject(conn, &plan).await?;
                    match rejected {
                        None => search.succeeded(range, elapsed),
                        Some(reason) => search.failed(range, elapsed, reason, None),
                    }
                }
                Ok((mutations, _)) => {
                    let bytes = mutation::output_bytes(&mutations);
                    let over = good.len().saturating_add(mutations.len())
                        > policy.limits.max_mutations
                        || good_bytes.saturating_add(bytes) > policy.limits.max_batch_bytes;
                    if over && !good.is_empty() {
                        // What is kept stays within one call's output limits.
                        search.output_full(elapsed);
                        break;
                    }
                    good.extend(mutations);
                    good_bytes = good_bytes.saturating_add(bytes);
                    search.succeeded(range, elapsed);
                }
                Err(error) if error.is_component_failure() => {
                    let named = named_event(&error, batch);
                    search.failed(range, elapsed, error.to_string(), named);
                }
                Err(error) => return Err(error),
            }
        }
        tracing::info!(
            projection = self.name(),
            calls = search.calls(),
            guest_ms = search.spent().as_millis(),
            settled = search.settled(),
            of = len,
            "searched a failing batch for its poison events"
        );
        let plan = if careful {
            mutation::Plan::default()
        } else {
            mutation::plan(&version.schema, &good)?
        };
        let paused = search.paused_at().map(|(index, message)| {
            let event = &batch[*index];
            BatchError::Poison {
                position: event.global_position,
                event_id: event.event_id.clone(),
                event_type: event.event_type.clone(),
                message: message.clone(),
            }
        });
        let settled = search.settled();
        Ok(Evaluation {
            settled,
            plan,
            poison: search.take_poison(),
            paused,
            narrowed: (settled < len).then(|| search.narrowed()),
        })
    }

    /// Runs `batch` through `version` in one call on a guest thread and validates the result (a
    /// one-stream repair): the mutations and the plan to apply.
    pub async fn evaluate_all(
        &self,
        version: &Active,
        batch: Vec<wit::Event>,
    ) -> Result<(Vec<wit::Mutation>, mutation::Plan), BatchError> {
        let len = batch.len();
        let (outcome, _) = self.call_range(version, &Arc::new(batch), 0..len).await?;
        outcome
    }

    /// Runs one event through `version` on a guest thread and validates the result (dead-letter
    /// replays): the plan to apply, or why it still fails.
    pub async fn evaluate_one(
        &self,
        version: &Active,
        event: wit::Event,
    ) -> Result<mutation::Plan, BatchError> {
        let (outcome, _) = self
            .call_range(version, &Arc::new(vec![event]), 0..1)
            .await?;
        let (_, plan) = outcome?;
        Ok(plan)
    }
}
