//! The batch write: one transaction per batch, and what to do when
//! PostgreSQL refuses it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use sqlx::PgConnection;
use tokio::sync::watch;

use super::event::{DeadLetter, OrderEvent, Outcome};
use super::{sleep_unless, Backoff, Worker};
use crate::store::pg_is_transient;

/// Why a batch failed.
pub(super) enum BatchError {
    /// PostgreSQL is the problem (down, restarting, a lost race): try again.
    Transient(sqlx::Error),
    /// The data is the problem: some entry in the batch is refused.
    Refused(sqlx::Error),
    /// The worker was asked to stop in the middle; nothing was committed.
    Stopped,
}

impl From<sqlx::Error> for BatchError {
    fn from(err: sqlx::Error) -> Self {
        if pg_is_transient(&err) {
            Self::Transient(err)
        } else {
            Self::Refused(err)
        }
    }
}

impl Worker {
    /// Writes `events` to PostgreSQL, retrying as long as PostgreSQL is the
    /// problem, and isolating the entries it refuses. `None` when asked to
    /// stop before it could commit.
    pub(super) async fn persist(
        &self,
        events: &[OrderEvent],
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        if events.is_empty() {
            return Some(Outcome::default());
        }
        let backoff = Backoff::equal_jitter(self.options.backoff_base, self.options.backoff_max);
        let mut retry = 0;
        loop {
            match self.write_batch(events, &mut shutdown).await {
                Ok(outcome) => return Some(outcome),
                Err(BatchError::Stopped) => return None,
                Err(BatchError::Transient(err)) => {
                    self.retrying(&err, events.len());
                    retry += 1;
                    if !sleep_unless(backoff.delay(retry), &mut shutdown).await {
                        return None;
                    }
                }
                Err(BatchError::Refused(err)) if events.len() == 1 => {
                    return self.persist_alone(&events[0], err, shutdown).await;
                }
                Err(BatchError::Refused(err)) => {
                    // Some entry is refused, and one refused row fails the
                    // whole transaction: find it by writing one at a time.
                    tracing::warn!(%err, size = events.len(), "a batch was refused; writing its entries one by one");
                    let mut outcome = Outcome::default();
                    for event in events {
                        let alone = match self
                            .write_batch(std::slice::from_ref(event), &mut shutdown)
                            .await
                        {
                            Ok(done) => Some(done),
                            Err(BatchError::Stopped) => None,
                            Err(BatchError::Transient(err) | BatchError::Refused(err)) => {
                                self.persist_alone(event, err, shutdown.clone()).await
                            }
                        };
                        outcome.merge(alone?);
                    }
                    return Some(outcome);
                }
            }
        }
    }

    /// One entry that failed: retried with backoff, up to `max_attempts`
    /// times when PostgreSQL refuses it (forever while PostgreSQL is merely
    /// away), then dead-lettered with PostgreSQL's reason.
    pub(super) async fn persist_alone(
        &self,
        event: &OrderEvent,
        first_error: sqlx::Error,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let backoff = Backoff::equal_jitter(self.options.backoff_base, self.options.backoff_max);
        let mut retry = 0;
        let mut refusals = u32::from(!pg_is_transient(&first_error));
        let mut last_error = first_error;
        loop {
            if refusals >= self.options.max_attempts {
                let reason = format!("PostgreSQL refused it {refusals} times: {last_error}");
                return Some(Outcome {
                    refused: vec![DeadLetter::of_event(event, reason, refusals)],
                    ..Outcome::default()
                });
            }
            self.retrying(&last_error, 1);
            retry += 1;
            if !sleep_unless(backoff.delay(retry), &mut shutdown).await {
                return None;
            }
            match self
                .write_batch(std::slice::from_ref(event), &mut shutdown)
                .await
            {
                Ok(outcome) => return Some(outcome),
                Err(BatchError::Stopped) => return None,
                Err(BatchError::Transient(err)) => last_error = err,
                Err(BatchError::Refused(err)) => {
                    refusals += 1;
                    last_error = err;
                }
            }
        }
    }

    pub(super) fn retrying(&self, err: &sqlx::Error, size: usize) {
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.metrics.event("persist_retry");
        tracing::warn!(consumer = %self.options.consumer, %err, size, "persisting failed; retrying after a pause");
    }

    /// One transaction: lock the tickets, insert what belongs to their
    /// current sale, decrement their stock by what was inserted, COMMIT.
    pub(super) async fn write_batch(
        &self,
        events: &[OrderEvent],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Outcome, BatchError> {
        let mut outcome = Outcome::default();
        let mut tx = self.store.pool().begin().await?;
        // The row locks line this batch up behind the loader (which reads
        // stock and orders under the same lock) and behind other workers'
        // batches of the same tickets.
        let current = lock_tickets(&mut tx, events).await?;
        let insert = sort_by_sale(events, &current, &mut outcome);
        let inserted = insert_orders(&mut tx, &insert).await?;
        let inserted_ids: BTreeSet<i64> = inserted.iter().map(|&(id, _)| id).collect();
        let skipped: Vec<&OrderEvent> = insert
            .iter()
            .copied()
            .filter(|e| !inserted_ids.contains(&e.order_id))
            .collect();
        if !skipped.is_empty() {
            explain_skipped(&mut tx, &skipped, &mut outcome).await?;
        }
        decrement_stock(&mut tx, &inserted).await?;

        if !self.options.pause_before_commit.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(self.options.pause_before_commit) => {}
                _ = shutdown.changed() => return Err(BatchError::Stopped),
            }
        }
        tx.commit().await?;

        let by_order: HashMap<i64, &OrderEvent> = insert.iter().map(|e| (e.order_id, *e)).collect();
        outcome.persisted = inserted
            .iter()
            .filter_map(|(id, _)| by_order.get(id).map(|e| e.entry_id.clone()))
            .collect();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics.event("persist_batch");
        Ok(outcome)
    }
}

/// Takes the tickets' row locks, in id order, and reads which sale each
/// is in: `(sale_epoch, version)` by ticket id.
async fn lock_tickets(
    tx: &mut PgConnection,
    events: &[OrderEvent],
) -> Result<HashMap<i64, (i64, i64)>, sqlx::Error> {
    let tickets: BTreeSet<i64> = events.iter().map(|e| e.ticket).collect();
    let tickets: Vec<i64> = tickets.into_iter().collect();
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT id, sale_epoch, version FROM tickets WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&tickets)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, epoch, version)| (id, (epoch, version)))
        .collect())
}

/// Sorts `events` by the sale they were sold in: the ones to insert are
/// returned; the voided and the refused go into `outcome`.
fn sort_by_sale<'a>(
    events: &'a [OrderEvent],
    current: &HashMap<i64, (i64, i64)>,
    outcome: &mut Outcome,
) -> Vec<&'a OrderEvent> {
    // Only orders of the ticket's current sale go in. An order of an
    // older epoch belongs to a sale a reset has closed: `reset.rs`
    // fences Redis before it commits, so that sale was made before the
    // reset, which voids it as it voids the orders it deletes. It is
    // acknowledged as voided, not counted against the new sale. An
    // order of the current epoch on a ticket reset in PostgreSQL alone
    // (`version = 0`, no fence) may have been sold after that reset: a
    // 201 nobody can keep, so it goes to the dead letters, for a person.
    let mut insert = Vec::with_capacity(events.len());
    for event in events {
        match current.get(&event.ticket) {
            None => outcome.refused.push(DeadLetter::of_event(
                event,
                format!("ticket {} no longer exists", event.ticket),
                1,
            )),
            Some(&(epoch, _)) if event.epoch < epoch => {
                outcome.voided.push(event.entry_id.clone());
            }
            Some(&(epoch, version)) if epoch != event.epoch || version == 0 => {
                outcome.refused.push(DeadLetter::of_event(
                    event,
                    format!(
                        "sold in sale {} of ticket {}, which was put on sale again in \
                         PostgreSQL without fencing Redis (now sale {}{})",
                        event.epoch,
                        event.ticket,
                        epoch,
                        if version == 0 { ", not loaded yet" } else { "" }
                    ),
                    1,
                ))
            }
            Some(_) => insert.push(event),
        }
    }
    insert
}

/// Inserts the orders (idempotently, never a cancelled one) and returns
/// the `(order id, ticket)` of each row actually inserted.
async fn insert_orders(
    tx: &mut PgConnection,
    insert: &[&OrderEvent],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    Ok(if insert.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "INSERT INTO ticket_orders (id, ticket_id, user_id, created_at, sold_at) \
             SELECT e.id, e.ticket, e.buyer, clock_timestamp(), \
                    'epoch'::timestamptz + e.sold_us * interval '1 microsecond' \
             FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[]) \
                  AS e(id, ticket, buyer, sold_us) \
             WHERE NOT EXISTS (SELECT 1 FROM cancelled_orders c WHERE c.id = e.id) \
             ON CONFLICT DO NOTHING \
             RETURNING id, ticket_id",
        )
        .bind(insert.iter().map(|e| e.order_id).collect::<Vec<_>>())
        .bind(insert.iter().map(|e| e.ticket).collect::<Vec<_>>())
        .bind(insert.iter().map(|e| e.user).collect::<Vec<_>>())
        .bind(insert.iter().map(|e| e.sold_us).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
    })
}

/// Says why each of `skipped` was not inserted. This very order already
/// there (delivered before) or cancelled (see `cancel.rs`: a cancellation
/// takes the ticket's row lock first too, so it is committed by now, and
/// the order must not come back): both are done. Otherwise something else
/// holds its place, and the entry is refused.
async fn explain_skipped(
    tx: &mut PgConnection,
    skipped: &[&OrderEvent],
    outcome: &mut Outcome,
) -> Result<(), sqlx::Error> {
    let existing: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, ticket_id, user_id FROM ticket_orders WHERE id = ANY($1)")
            .bind(skipped.iter().map(|e| e.order_id).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
    let existing: HashMap<i64, (i64, i64)> = existing
        .into_iter()
        .map(|(id, ticket, user)| (id, (ticket, user)))
        .collect();
    let cancelled: BTreeSet<i64> =
        sqlx::query_scalar("SELECT id FROM cancelled_orders WHERE id = ANY($1)")
            .bind(skipped.iter().map(|e| e.order_id).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    for event in skipped {
        if cancelled.contains(&event.order_id) {
            outcome.redelivered.push(event.entry_id.clone());
            continue;
        }
        match existing.get(&event.order_id) {
            Some(&(ticket, user)) if ticket == event.ticket && user == event.user => {
                outcome.redelivered.push(event.entry_id.clone());
            }
            Some(&(ticket, user)) => outcome.refused.push(DeadLetter::of_event(
                event,
                format!(
                    "order id {} already belongs to another order (ticket {ticket}, user {user})",
                    event.order_id
                ),
                1,
            )),
            None => outcome.refused.push(DeadLetter::of_event(
                event,
                format!(
                    "user {} already holds another order for ticket {}",
                    event.user, event.ticket
                ),
                1,
            )),
        }
    }
    Ok(())
}

/// Takes from each ticket's stock what was inserted, not what was
/// delivered: a redelivered entry inserted nothing and takes nothing.
async fn decrement_stock(
    tx: &mut PgConnection,
    inserted: &[(i64, i64)],
) -> Result<(), sqlx::Error> {
    let mut per_ticket: BTreeMap<i64, i32> = BTreeMap::new();
    for &(_, ticket) in inserted {
        *per_ticket.entry(ticket).or_default() += 1;
    }
    if !per_ticket.is_empty() {
        sqlx::query(
            "UPDATE tickets AS t SET stock = t.stock - c.sold, version = t.version + 1 \
             FROM unnest($1::int8[], $2::int4[]) AS c(id, sold) WHERE t.id = c.id",
        )
        .bind(per_ticket.keys().copied().collect::<Vec<_>>())
        .bind(per_ticket.values().copied().collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
