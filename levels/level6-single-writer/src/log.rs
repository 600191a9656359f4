//! The log's vocabulary: which partition a ticket belongs to, the Redis
//! names of a partition, and the request and answer that travel over it.
//!
//! Kafka words, Redis things: a *topic* of `P` partitions is `P` streams,
//! `l6:<ns>:p0` .. `l6:<ns>:p{P-1}`; a *consumer group* is the stream's
//! consumer group [`GROUP`]; a *record key* is the ticket id, hashed to pick
//! the partition, so that every request for one ticket lands in one stream,
//! in the order it arrived.

use std::collections::HashMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use ticket_core::{OrderId, TicketId, UserId};

/// The consumer group every decider reads through.
pub const GROUP: &str = "deciders";

/// The partition of `ticket` among `partitions`: FNV-1a of the id's bytes,
/// modulo the count. Written out, not `std`'s hasher, so that every process
/// and every version computes the same partition for the same ticket.
pub fn partition_of(ticket: TicketId, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ticket.get().to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).expect("below a u32")
}

/// The Redis names of one database's log.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// The names under the database's namespace.
    pub fn new(namespace: &str) -> Self {
        Self {
            base: format!("l6:{namespace}"),
        }
    }

    /// Partition `p`'s stream of requests.
    pub fn stream(&self, p: u32) -> String {
        format!("{}:p{p}", self.base)
    }

    /// Partition `p`'s changelog (the `state-store` strategy).
    pub fn changelog(&self, p: u32) -> String {
        format!("{}:changelog:p{p}", self.base)
    }

    /// The servers that share the partitions (a sorted set, see
    /// [`crate::members`]).
    pub fn members(&self) -> String {
        format!("{}:members", self.base)
    }

    /// The pub/sub channel a server hears its answers on.
    pub fn replies(&self, instance: &str) -> String {
        format!("{}:replies:{instance}", self.base)
    }

    /// The key prefix of the partitions' leases (Level 3's lock).
    pub fn lease_prefix(&self) -> String {
        format!("{}:lease", self.base)
    }

    /// The lease's lock name of partition `p`.
    pub fn lease_name(p: u32) -> String {
        format!("p{p}")
    }
}

/// What a request asks the decider to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Buy one unit of `ticket` for `user`.
    Buy {
        /// The ticket.
        ticket: TicketId,
        /// The buyer.
        user: UserId,
    },
    /// Cancel `order` of `ticket`, which `user` says is theirs.
    Cancel {
        /// The ticket.
        ticket: TicketId,
        /// Who asks.
        user: UserId,
        /// The order.
        order: OrderId,
    },
}

impl Command {
    /// The ticket the command is about: the record key.
    pub fn ticket(&self) -> TicketId {
        match *self {
            Self::Buy { ticket, .. } | Self::Cancel { ticket, .. } => ticket,
        }
    }

    /// The user who asks.
    pub fn user(&self) -> UserId {
        match *self {
            Self::Buy { user, .. } | Self::Cancel { user, .. } => user,
        }
    }
}

/// One request on a partition's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Decided once, whatever is redelivered: the exactly-once key.
    pub id: String,
    /// What to do.
    pub command: Command,
    /// The client's `Idempotency-Key`, if it sent one (kept with the answer).
    pub key: Option<String>,
    /// The server (instance) waiting for the answer.
    pub reply_to: String,
}

impl Request {
    /// The request as stream entry fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("ticket", self.command.ticket().to_string()),
            ("user", self.command.user().to_string()),
            ("reply_to", self.reply_to.clone()),
        ];
        if let Command::Cancel { order, .. } = self.command {
            fields.push(("cancel", order.to_string()));
        }
        if let Some(key) = &self.key {
            fields.push(("key", key.clone()));
        }
        fields
    }

    /// Reads a request back from a stream entry's fields.
    pub fn from_fields(fields: &HashMap<String, redis::Value>) -> anyhow::Result<Self> {
        let text = |name: &str| -> anyhow::Result<Option<String>> {
            fields
                .get(name)
                .map(|value| redis::from_redis_value::<String>(value.clone()))
                .transpose()
                .with_context(|| format!("field {name} is not text"))
        };
        let number = |name: &str| -> anyhow::Result<i64> {
            text(name)?
                .with_context(|| format!("no field {name}"))?
                .parse()
                .with_context(|| format!("field {name} is not a number"))
        };
        let ticket = TicketId::parse(i128::from(number("ticket")?))?;
        let user = UserId::parse(i128::from(number("user")?))?;
        let command = match text("cancel")? {
            None => Command::Buy { ticket, user },
            Some(order) => Command::Cancel {
                ticket,
                user,
                order: OrderId(order.parse().context("field cancel is not a number")?),
            },
        };
        Ok(Self {
            id: text("id")?.context("no field id")?,
            command,
            key: text("key")?,
            reply_to: text("reply_to")?.unwrap_or_default(),
        })
    }
}

/// A decided request's answer, as the HTTP client will get it: recorded
/// in PostgreSQL (`level6_requests`) and sent back to the waiting server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The request it answers.
    pub id: String,
    /// HTTP status.
    pub status: u16,
    /// The body, byte for byte.
    pub body: String,
    /// The Location header of a 201.
    pub location: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_always_lands_in_the_same_partition_and_tickets_spread() {
        let ticket = |id| TicketId::parse(id).unwrap();
        assert_eq!(partition_of(ticket(1), 4), partition_of(ticket(1), 4));
        let used: std::collections::HashSet<u32> =
            (1..=64).map(|id| partition_of(ticket(id), 4)).collect();
        assert_eq!(used.len(), 4, "64 tickets use every one of 4 partitions");
        assert!((1..=64).all(|id| partition_of(ticket(id), 4) < 4));
    }

    #[test]
    fn a_request_survives_the_trip_through_stream_fields() {
        let request = Request {
            id: "r-1".into(),
            command: Command::Cancel {
                ticket: TicketId::parse(7).unwrap(),
                user: UserId::parse(42).unwrap(),
                order: OrderId(9),
            },
            key: Some("k".into()),
            reply_to: "server-a".into(),
        };
        let fields: HashMap<String, redis::Value> = request
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(Request::from_fields(&fields).unwrap(), request);
    }
}
