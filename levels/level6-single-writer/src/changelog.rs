//! The `state-store` strategy's changelog: the decider's state, as a
//! compacted log a new owner can replay instead of asking PostgreSQL for
//! every ticket's orders.
//!
//! Kafka Streams keeps a state store's changes in a *compacted topic*: one
//! record per key, later records replacing earlier ones, older ones removed
//! by the broker. Here the topic is one stream per partition
//! (`l6:<ns>:changelog:p<N>`), with two kinds of records:
//!
//! | record | fields | replaced when |
//! | --- | --- | --- |
//! | a ticket | `kind=t ticket stock version` | every batch that touches the ticket |
//! | a buyer | `kind=b ticket user order` | never; removed when the order is cancelled |
//!
//! Compaction is done by the writer, not a broker: the decider remembers
//! the entry id of each live key and `XDEL`s a record as soon as a newer
//! one replaces it. The stream therefore holds one record per ticket and
//! one per buyer, and replaying it costs what the state weighs, not what
//! its history weighs.
//!
//! The changelog is written *after* COMMIT, so it can lag PostgreSQL (the
//! decider died in between, or Redis refused the write). That is safe:
//! every batch checks a ticket's (version, stock) against its row and
//! reloads it from PostgreSQL when they differ, and a reloaded ticket is
//! written to the changelog whole again, its old records deleted.

use std::collections::HashMap;

use anyhow::Context as _;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use ticket_core::{OrderId, TicketId, UserId};

use crate::log::{Answer, Command, Keys, Request};
use crate::state::PartitionState;

/// How many records one XRANGE reads during a replay.
const PAGE: usize = 1_000;

/// The most commands one round trip sends when the changelog is written
/// (XADDs, or ids in one XDEL). A round trip of this size takes
/// milliseconds, far inside the engine's 5 s response timeout, whatever the
/// state weighs.
pub const CHUNK: usize = 1_000;

/// Where each live key's record is, so that a newer record can delete it.
#[derive(Debug, Default)]
pub struct Changelog {
    tickets: HashMap<TicketId, TicketLog>,
    /// Entry ids of replaced records that a failed append did not delete.
    stale: Vec<String>,
}

#[derive(Debug, Default)]
struct TicketLog {
    /// The version the last ticket record carried.
    version: i64,
    /// That record's entry id.
    entry: Option<String>,
    /// Each buyer's record.
    buyers: HashMap<UserId, String>,
}

/// Replays partition `p`'s changelog into a state, and the index of its
/// records.
pub async fn rebuild(
    redis: &ConnectionManager,
    keys: &Keys,
    p: u32,
) -> anyhow::Result<(PartitionState, Changelog)> {
    let stream = keys.changelog(p);
    let mut state = PartitionState::new();
    let mut log = Changelog::default();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut redis.clone())
            .await
            .context("read the changelog")?;
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        let full = page.ids.len() == PAGE;
        for entry in page.ids {
            let field = |name: &str| -> Option<i64> {
                let value = entry.map.get(name)?;
                redis::from_redis_value::<String>(value.clone())
                    .ok()?
                    .parse()
                    .ok()
            };
            let Some(ticket) = field("ticket").and_then(|t| TicketId::parse(t.into()).ok()) else {
                continue;
            };
            let ticket_state = state.entry(ticket).or_default();
            let ticket_log = log.tickets.entry(ticket).or_default();
            if let (Some(stock), Some(version)) = (field("stock"), field("version")) {
                ticket_state.stock = i32::try_from(stock).unwrap_or(0);
                ticket_state.version = version;
                ticket_log.version = version;
                ticket_log.entry = Some(entry.id.clone());
            } else if let (Some(user), Some(order)) = (field("user"), field("order")) {
                if let Ok(user) = UserId::parse(user.into()) {
                    ticket_state.buyers.insert(user, OrderId(order));
                    ticket_log.buyers.insert(user, entry.id.clone());
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok((state, log))
}

impl Changelog {
    /// Logs what a committed batch changed: for each ticket it touched,
    /// either the changes (the batch started from the version we logged
    /// last) or the whole ticket (it was reloaded from PostgreSQL).
    ///
    /// The records go to Redis in round trips of at most [`CHUNK`]
    /// commands, new records first and the `XDEL` of the replaced ones
    /// last: a ticket held by 100,000 buyers is a hundred round trips of a
    /// few milliseconds each, not one pipeline that outlasts the
    /// connection's response timeout. A decider that dies between two
    /// round trips leaves the ticket's *old* record as the last one in the
    /// stream (the new one is written after its buyers), so the next owner
    /// sees a version that differs from the row and reloads the ticket.
    pub async fn append(
        &mut self,
        redis: &ConnectionManager,
        keys: &Keys,
        p: u32,
        state: &PartitionState,
        requests: &[Request],
        answers: &[Answer],
    ) -> anyhow::Result<()> {
        let mut touched: Vec<TicketId> = requests.iter().map(|r| r.command.ticket()).collect();
        touched.sort();
        touched.dedup();
        let mut records: Vec<Record> = Vec::new();
        // Replaced records a failed append left behind are deleted now.
        let mut deleted: Vec<String> = std::mem::take(&mut self.stale);
        for &ticket in &touched {
            let Some(now) = state.get(&ticket) else {
                continue;
            };
            let known = self.tickets.entry(ticket).or_default();
            let whole = known.version + 1 != now.version;
            deleted.extend(known.entry.take());
            if whole {
                deleted.extend(known.buyers.drain().map(|(_, id)| id));
                for (user, order) in &now.buyers {
                    records.push(Record::buyer(ticket, *user, *order));
                }
            } else {
                for (request, answer) in requests.iter().zip(answers) {
                    match (request.command, answer.status) {
                        (Command::Buy { ticket: t, user }, 201) if t == ticket => {
                            let order = now.buyers.get(&user).copied().unwrap_or(OrderId(0));
                            records.push(Record::buyer(ticket, user, order));
                        }
                        (
                            Command::Cancel {
                                ticket: t, user, ..
                            },
                            200,
                        ) if t == ticket => {
                            deleted.extend(known.buyers.remove(&user));
                        }
                        _ => {}
                    }
                }
            }
            known.version = now.version;
            records.push(Record::ticket(ticket, now.stock, now.version));
        }
        let written = self
            .write(redis, &keys.changelog(p), &records, &deleted)
            .await;
        if written.is_err() {
            // Some records may be missing: the next batch that touches
            // these tickets writes them whole (and deletes what we knew of).
            for ticket in &touched {
                if let Some(known) = self.tickets.get_mut(ticket) {
                    known.version = i64::MIN;
                }
            }
            self.stale.extend(deleted);
        }
        written
    }

    /// Appends `records` and then deletes `deleted`, [`CHUNK`] commands per
    /// round trip, remembering each new record's entry id as it lands.
    async fn write(
        &mut self,
        redis: &ConnectionManager,
        stream: &str,
        records: &[Record],
        deleted: &[String],
    ) -> anyhow::Result<()> {
        for chunk in records.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for record in chunk {
                pipe.xadd(stream, "*", &record.fields());
            }
            let ids: Vec<String> = pipe
                .query_async(&mut redis.clone())
                .await
                .context("append to the changelog")?;
            for (record, id) in chunk.iter().zip(ids) {
                match *record {
                    Record::Buyer { ticket, user, .. } => {
                        let known = self.tickets.entry(ticket).or_default();
                        known.buyers.insert(user, id);
                    }
                    Record::Ticket { ticket, .. } => {
                        self.tickets.entry(ticket).or_default().entry = Some(id);
                    }
                }
            }
        }
        for chunk in deleted.chunks(CHUNK) {
            let _: i64 = redis::cmd("XDEL")
                .arg(stream)
                .arg(chunk)
                .query_async(&mut redis.clone())
                .await
                .context("compact the changelog")?;
        }
        Ok(())
    }
}

/// One changelog record to append.
#[derive(Debug)]
enum Record {
    /// A ticket's stock and version.
    Ticket {
        ticket: TicketId,
        stock: i32,
        version: i64,
    },
    /// One of its buyers.
    Buyer {
        ticket: TicketId,
        user: UserId,
        order: OrderId,
    },
}

impl Record {
    fn buyer(ticket: TicketId, user: UserId, order: OrderId) -> Self {
        Self::Buyer {
            ticket,
            user,
            order,
        }
    }

    fn ticket(ticket: TicketId, stock: i32, version: i64) -> Self {
        Self::Ticket {
            ticket,
            stock,
            version,
        }
    }

    fn fields(&self) -> [(&'static str, String); 3] {
        match *self {
            Self::Buyer {
                ticket,
                user,
                order,
            } => buyer_fields(ticket, user, order),
            Self::Ticket {
                ticket,
                stock,
                version,
            } => [
                ("ticket", ticket.to_string()),
                ("stock", stock.to_string()),
                ("version", version.to_string()),
            ],
        }
    }
}

fn buyer_fields(ticket: TicketId, user: UserId, order: OrderId) -> [(&'static str, String); 3] {
    [
        ("ticket", ticket.to_string()),
        ("user", user.to_string()),
        ("order", order.to_string()),
    ]
}
