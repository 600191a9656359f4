//! Writing one batch of decisions to PostgreSQL, under the partition's
//! fencing token.
//!
//! A batch goes through three steps, and only the last holds locks:
//!
//! 1. **Look** (no transaction): which requests were answered before (a
//!    redelivery after a crash), and does our memory of each ticket still
//!    match its row (version and stock)? A ticket that changed behind our
//!    back (a reset) is reloaded from its orders.
//! 2. **Decide** in memory, in stream order ([`crate::state::decide`]), and
//!    wait the think time: the window in which a decider can die or stall
//!    with decisions nobody has recorded yet.
//! 3. **Write**, one transaction: first the fence (`UPDATE level6_partitions
//!    ... WHERE fence = our token`: a decider whose lease was taken over
//!    updates nothing and rolls back, before it has touched a ticket), then
//!    each ticket's new stock guarded by the (version, stock) we saw, the
//!    orders, the cancellations, and every answer (`level6_requests`).
//!    COMMIT, then the answers may be sent.
//!
//! The look happens before the fence check on purpose: a new owner bumps
//! the fence *before* its first look, and from then on no older owner can
//! commit, so what it saw cannot change under it except by a reset, which
//! the guarded ticket update catches.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use ticket_core::api::Problem;
use ticket_core::{CancelError, Cancellation, Order, OrderId, PurchaseError, TicketId, UserId};

use crate::log::{Answer, Command, Request};
use crate::state::{decide, Decision, PartitionState, TicketState};

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The partition's fence holds a newer token: another decider owns it
    /// now, and this one must stop. Nothing was written.
    #[error("fenced off: partition {partition} belongs to a newer owner than token {token}")]
    Fenced {
        /// The partition.
        partition: u32,
        /// Our token.
        token: u64,
    },
    /// PostgreSQL failed; nothing was written, the batch will be retried.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Who writes: the partition and the owner's fencing token.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    /// The partition.
    pub partition: u32,
    /// The token of the lease it holds.
    pub token: u64,
    /// The pause between deciding and writing (`--think-time-ms`).
    pub think: Duration,
}

/// How often a batch is decided again when a ticket changed between the
/// look and the write (a reset during the batch), before giving up.
const ATTEMPTS: usize = 3;

/// Decides and writes `requests` (in stream order) and returns one answer
/// per request, in the same order. `state` is changed only by a batch that
/// committed.
pub async fn run_batch(
    pool: &PgPool,
    state: &mut PartitionState,
    writer: Writer,
    requests: &[Request],
) -> Result<Vec<Answer>, BatchError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let answered = answered_before(pool, requests).await?;
        let tickets: Vec<TicketId> = requests
            .iter()
            .filter(|r| !answered.contains_key(&r.id))
            .map(|r| r.command.ticket())
            .collect();
        refresh(pool, state, &tickets).await?;
        let mut scratch: PartitionState = tickets
            .iter()
            .filter_map(|t| state.get(t).map(|s| (*t, s.clone())))
            .collect();
        let decided = decide_all(&mut scratch, requests, &answered);
        ticket_core::strategy::think(writer.think).await;
        match write(pool, writer, state, &mut scratch, &decided).await {
            Ok(answers) => {
                state.extend(scratch);
                return Ok(answers);
            }
            Err(Written::Stale) if attempt < ATTEMPTS => {
                // A ticket changed between the look and the write: forget
                // what we knew of the batch's tickets and decide again.
                for ticket in &tickets {
                    state.remove(ticket);
                }
            }
            Err(Written::Stale) => {
                for ticket in &tickets {
                    state.remove(ticket);
                }
                return Err(BatchError::Database(sqlx::Error::Protocol(
                    "tickets kept changing under the batch".into(),
                )));
            }
            Err(Written::Failed(err)) => {
                for ticket in &tickets {
                    state.remove(ticket);
                }
                return Err(err);
            }
        }
    }
}

/// One request and what was decided for it.
#[derive(Debug)]
struct Decided<'a> {
    request: &'a Request,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// Answered before: send that answer again, change nothing.
    Replay(Answer),
    /// Decided now.
    Decision(Decision),
}

/// Decides every request not answered before, in order. A request id seen
/// twice in one batch (redelivered next to itself) is decided once.
fn decide_all<'a>(
    scratch: &mut PartitionState,
    requests: &'a [Request],
    answered: &HashMap<String, Answer>,
) -> Vec<Decided<'a>> {
    let mut seen = std::collections::HashSet::new();
    requests
        .iter()
        .filter(|request| seen.insert(request.id.as_str()))
        .map(|request| {
            let outcome = match answered.get(&request.id) {
                Some(answer) => Outcome::Replay(answer.clone()),
                None => {
                    let ticket = scratch.get_mut(&request.command.ticket());
                    Outcome::Decision(decide(ticket, request.command))
                }
            };
            Decided { request, outcome }
        })
        .collect()
}

/// The answers already recorded for any of `requests`.
async fn answered_before(
    pool: &PgPool,
    requests: &[Request],
) -> Result<HashMap<String, Answer>, sqlx::Error> {
    let ids: Vec<&str> = requests.iter().map(|r| r.id.as_str()).collect();
    let rows: Vec<(String, i16, String, Option<String>)> = sqlx::query_as(
        "SELECT request_id, status, body, location FROM level6_requests \
         WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, body, location)| {
            let status = u16::try_from(status).unwrap_or(500);
            let answer = Answer {
                id: id.clone(),
                status,
                body,
                location,
            };
            (id, answer)
        })
        .collect())
}

/// Makes `state` match PostgreSQL for `tickets`: keeps what still matches
/// its row's (version, stock), reloads the rest from the orders, forgets
/// tickets that do not exist.
pub async fn refresh(
    pool: &PgPool,
    state: &mut PartitionState,
    tickets: &[TicketId],
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = tickets.iter().map(|t| t.get()).collect();
    let rows: Vec<(i64, i32, i64)> =
        sqlx::query_as("SELECT id, stock, version FROM tickets WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let rows: HashMap<i64, (i32, i64)> = rows.into_iter().map(|(i, s, v)| (i, (s, v))).collect();
    for ticket in tickets {
        let Some(&(stock, version)) = rows.get(&ticket.get()) else {
            state.remove(ticket);
            continue;
        };
        let fresh = state
            .get(ticket)
            .is_some_and(|s| s.stock == stock && s.version == version);
        if !fresh {
            let buyers = load_buyers(pool, *ticket).await?;
            let loaded = TicketState {
                stock,
                version,
                buyers,
            };
            state.insert(*ticket, loaded);
        }
    }
    Ok(())
}

/// Who holds an order for `ticket`, from PostgreSQL.
pub async fn load_buyers(
    pool: &PgPool,
    ticket: TicketId,
) -> Result<HashMap<UserId, OrderId>, sqlx::Error> {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT user_id, id FROM ticket_orders WHERE ticket_id = $1")
            .bind(ticket.get())
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user, order)| Some((UserId::parse(i128::from(user)).ok()?, OrderId(order))))
        .collect())
}

/// Why [`write`] wrote nothing.
enum Written {
    /// A ticket row changed since the look.
    Stale,
    /// Fenced off, or the database failed.
    Failed(BatchError),
}

impl From<sqlx::Error> for Written {
    fn from(err: sqlx::Error) -> Self {
        Self::Failed(BatchError::Database(err))
    }
}

/// Step 3: the transaction. Fence first, then tickets, orders,
/// cancellations and answers; COMMIT.
async fn write(
    pool: &PgPool,
    writer: Writer,
    seen: &PartitionState,
    scratch: &mut PartitionState,
    decided: &[Decided<'_>],
) -> Result<Vec<Answer>, Written> {
    let mut tx = pool.begin().await?;
    let fence_holds = sqlx::query(
        "UPDATE level6_partitions SET fence = fence WHERE partition = $1 AND fence = $2",
    )
    .bind(i32::try_from(writer.partition).unwrap_or(i32::MAX))
    .bind(i64::try_from(writer.token).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !fence_holds {
        return Err(Written::Failed(BatchError::Fenced {
            partition: writer.partition,
            token: writer.token,
        }));
    }
    for (ticket, after) in scratch.iter_mut() {
        let before = &seen[ticket];
        let updated = sqlx::query(
            "UPDATE tickets SET stock = $2, version = version + 1 \
             WHERE id = $1 AND version = $3 AND stock = $4",
        )
        .bind(ticket.get())
        .bind(after.stock)
        .bind(before.version)
        .bind(before.stock)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(Written::Stale);
        }
        after.version = before.version + 1;
    }
    let orders = insert_orders(&mut tx, decided).await?;
    let mut answers = Vec::with_capacity(decided.len());
    for item in decided {
        answers.push(answer(&mut tx, scratch, item, &orders).await?);
    }
    record_answers(&mut tx, decided, &answers).await?;
    tx.commit().await?;
    Ok(answers)
}

/// Inserts an order row for every sale of the batch; returns each one's id.
async fn insert_orders(
    conn: &mut PgConnection,
    decided: &[Decided<'_>],
) -> Result<HashMap<(i64, i64), i64>, sqlx::Error> {
    let (tickets, users): (Vec<i64>, Vec<i64>) = decided
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::Decision(Decision::Sold)))
        .map(|d| {
            (
                d.request.command.ticket().get(),
                d.request.command.user().get(),
            )
        })
        .unzip();
    if tickets.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "INSERT INTO ticket_orders (ticket_id, user_id) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[]) RETURNING ticket_id, user_id, id",
    )
    .bind(&tickets)
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(t, u, id)| ((t, u), id)).collect())
}

/// The answer to one decided request (moving a cancelled order out on
/// the way, and asking `cancelled_orders` where memory cannot tell).
async fn answer(
    conn: &mut PgConnection,
    scratch: &mut PartitionState,
    item: &Decided<'_>,
    orders: &HashMap<(i64, i64), i64>,
) -> Result<Answer, sqlx::Error> {
    let decision = match &item.outcome {
        Outcome::Replay(answer) => return Ok(answer.clone()),
        Outcome::Decision(decision) => *decision,
    };
    let id = item.request.id.clone();
    let refusal = |err: PurchaseError| problem_answer(&id, Problem::from(err));
    let refused = |err: CancelError| problem_answer(&id, Problem::from(err));
    Ok(match (decision, item.request.command) {
        (Decision::Sold, Command::Buy { ticket, user }) => {
            let order_id = OrderId(orders[&(ticket.get(), user.get())]);
            if let Some(state) = scratch.get_mut(&ticket) {
                state.buyers.insert(user, order_id);
            }
            let order = Order {
                order_id,
                ticket_id: ticket,
                user_id: user,
            };
            let (body, location) = ticket_core::idempotency::created_body(&order);
            Answer {
                id,
                status: 201,
                body,
                location: Some(location),
            }
        }
        (Decision::SoldOut, _) => refusal(PurchaseError::SoldOut),
        (Decision::AlreadyPurchased, _) => refusal(PurchaseError::AlreadyPurchased),
        (Decision::NotFound, _) => refusal(PurchaseError::NotFound),
        (Decision::Forbidden, _) => refused(CancelError::Forbidden),
        (
            Decision::Cancelled,
            Command::Cancel {
                ticket,
                user,
                order,
            },
        ) => {
            move_to_cancelled(conn, order).await?;
            cancelled_answer(id, ticket, user, order)
        }
        (
            Decision::AskCancelled,
            Command::Cancel {
                ticket,
                user,
                order,
            },
        ) => {
            let owner = ticket_core::db::cancelled_order_owner(&mut *conn, ticket, order).await?;
            match owner {
                Some(owner) if owner == user.get() => cancelled_answer(id, ticket, user, order),
                Some(_) => refused(CancelError::Forbidden),
                None => refused(CancelError::NotFound),
            }
        }
        (decision, command) => {
            unreachable!("decide() never answers {decision:?} to {command:?}")
        }
    })
}

/// Moves a cancelled order out of `ticket_orders`; the ticket's stock was
/// already written with the batch's other changes.
async fn move_to_cancelled(conn: &mut PgConnection, order: OrderId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH gone AS (DELETE FROM ticket_orders WHERE id = $1 \
                       RETURNING id, ticket_id, user_id, created_at) \
         INSERT INTO cancelled_orders (id, ticket_id, user_id, ordered_at) \
         SELECT id, ticket_id, user_id, created_at FROM gone",
    )
    .bind(order.0)
    .execute(conn)
    .await?;
    Ok(())
}

fn cancelled_answer(id: String, ticket: TicketId, user: UserId, order: OrderId) -> Answer {
    let cancellation = Cancellation {
        order_id: order,
        ticket_id: ticket,
        user_id: user,
        status: "cancelled",
    };
    Answer {
        id,
        status: 200,
        body: serde_json::to_string(&cancellation).expect("a cancellation serializes"),
        location: None,
    }
}

fn problem_answer(id: &str, problem: Problem) -> Answer {
    Answer {
        id: id.to_owned(),
        status: problem.status.as_u16(),
        body: problem.body(),
        location: None,
    }
}

/// Records every answer given now (replays are recorded already).
async fn record_answers(
    conn: &mut PgConnection,
    decided: &[Decided<'_>],
    answers: &[Answer],
) -> Result<(), sqlx::Error> {
    let mut columns = AnswerColumns::default();
    for (item, answer) in decided.iter().zip(answers) {
        if matches!(item.outcome, Outcome::Replay(_)) {
            continue;
        }
        columns.push(item.request, answer);
    }
    if columns.ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO level6_requests \
             (request_id, ticket_id, user_id, idem_key, status, body, location) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], \
                              $5::smallint[], $6::text[], $7::text[])",
    )
    .bind(&columns.ids)
    .bind(&columns.tickets)
    .bind(&columns.users)
    .bind(&columns.keys)
    .bind(&columns.statuses)
    .bind(&columns.bodies)
    .bind(&columns.locations)
    .execute(conn)
    .await?;
    Ok(())
}

/// `level6_requests` rows, column by column, for one `unnest` insert.
#[derive(Default)]
struct AnswerColumns {
    ids: Vec<String>,
    tickets: Vec<i64>,
    users: Vec<i64>,
    keys: Vec<Option<String>>,
    statuses: Vec<i16>,
    bodies: Vec<String>,
    locations: Vec<Option<String>>,
}

impl AnswerColumns {
    fn push(&mut self, request: &Request, answer: &Answer) {
        self.ids.push(request.id.clone());
        self.tickets.push(request.command.ticket().get());
        self.users.push(request.command.user().get());
        self.keys.push(request.key.clone());
        self.statuses
            .push(i16::try_from(answer.status).unwrap_or(500));
        self.bodies.push(answer.body.clone());
        self.locations.push(answer.location.clone());
    }
}

/// Takes partition `partition` for `token` in PostgreSQL: the fence moves
/// up to our token, unless a newer owner already moved it further (then
/// `Err(their token)`: Redis handed out an old token, see
/// [`level3::lock::RedisLock::raise_token_floor`]).
pub async fn take_fence(
    pool: &PgPool,
    partition: u32,
    token: u64,
) -> Result<Result<(), i64>, sqlx::Error> {
    let partition = i32::try_from(partition).unwrap_or(i32::MAX);
    let token = i64::try_from(token).unwrap_or(i64::MAX);
    let moved: Option<i64> = sqlx::query_scalar(
        "INSERT INTO level6_partitions (partition, fence) VALUES ($1, $2) \
         ON CONFLICT (partition) DO UPDATE SET fence = EXCLUDED.fence \
         WHERE level6_partitions.fence < EXCLUDED.fence RETURNING fence",
    )
    .bind(partition)
    .bind(token)
    .fetch_optional(pool)
    .await?;
    if moved.is_some() {
        return Ok(Ok(()));
    }
    let theirs: i64 =
        sqlx::query_scalar("SELECT fence FROM level6_partitions WHERE partition = $1")
            .bind(partition)
            .fetch_one(pool)
            .await?;
    Ok(Err(theirs))
}
