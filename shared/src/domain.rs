//! The ticket domain that every level shares: ids, tickets, orders, the
//! outcomes of a purchase, and the one trait every strategy implements.
//!
//! Nothing in this module knows about HTTP, SQL or Redis. The adapters
//! ([`crate::db`], [`crate::api`]) translate between these types and the
//! outside world, so a level can swap PostgreSQL locks for Redis locks without
//! touching the words the rest of the code speaks.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

/// Why a raw id was refused. Carries the field name so that the API can say
/// which value was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be a whole number from 1 to {max}, got {got}", max = i64::MAX)]
pub struct InvalidId {
    /// Which id was wrong (`ticket_id`, `user_id`).
    pub field: &'static str,
    /// The value that was refused.
    pub got: i128,
}

macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// Checks that `raw` is a usable id: positive, and small enough for
            /// PostgreSQL's BIGINT. Every id in the system went through here.
            pub fn parse(raw: i128) -> Result<Self, InvalidId> {
                match i64::try_from(raw) {
                    Ok(id) if id > 0 => Ok(Self(id)),
                    _ => Err(InvalidId { field: $field, got: raw }),
                }
            }

            /// The id as PostgreSQL stores it.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

positive_id!(
    /// A ticket (an event's pool of seats) that buyers race for.
    TicketId,
    "ticket_id"
);
positive_id!(
    /// A buyer. One buyer may hold at most one order per ticket.
    UserId,
    "user_id"
);

/// An order's id, assigned by the store that recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OrderId(pub i64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A ticket as buyers see it.
///
/// `total - stock` and `sold` are two ways of counting sales. With correct
/// concurrency control they agree; a lost update (Level 0, Level 1 on two
/// servers) makes `sold` larger than `total - stock`, which is exactly what
/// the lessons ask you to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ticket {
    /// The ticket's id.
    pub id: TicketId,
    /// A human name for the event.
    pub name: String,
    /// How many were put on sale.
    pub total: i32,
    /// How many are left, as the stock column says.
    pub stock: i32,
    /// How many orders exist, counted from the orders themselves.
    pub sold: i64,
}

/// A successful purchase: one buyer holds one ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Order {
    /// The order's id.
    pub order_id: OrderId,
    /// Which ticket was bought.
    pub ticket_id: TicketId,
    /// Who bought it.
    pub user_id: UserId,
}

/// Everything that can stop a purchase. Callers branch on these: the API maps
/// each to its own status code, the load tool counts each separately, and a
/// buyer answered [`PurchaseError::Busy`] tries again.
#[derive(Debug, thiserror::Error)]
pub enum PurchaseError {
    /// No stock left.
    #[error("the ticket is sold out")]
    SoldOut,
    /// This buyer already holds this ticket (UNIQUE (ticket_id, user_id)).
    #[error("this user already purchased this ticket")]
    AlreadyPurchased,
    /// The strategy gave up for now: a lock wait timed out, NOWAIT found the
    /// row held, retries ran out, or the connection pool was exhausted. Trying
    /// again later may succeed.
    #[error("busy: {reason}")]
    Busy {
        /// What was busy, for the problem's detail and for logs.
        reason: &'static str,
        /// A hint for when to try again.
        retry_after: Duration,
    },
    /// A service the strategy needs (the database, Redis) does not answer.
    #[error("a service is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// There is no such ticket.
    #[error("no such ticket")]
    NotFound,
    /// A bug or an unforeseen failure. The API answers 500 and logs it.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl PurchaseError {
    /// A [`PurchaseError::Busy`] with the default retry hint.
    pub fn busy(reason: &'static str) -> Self {
        Self::Busy {
            reason,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }

    /// The outcome's stable snake_case name, as the API's `code` field and the
    /// metrics' `outcome` label spell it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::AlreadyPurchased => "already_purchased",
            Self::Busy { .. } => "busy",
            Self::Unavailable(_) => "unavailable",
            Self::NotFound => "not_found",
            Self::Unexpected(_) => "internal",
        }
    }
}

/// How long a busy buyer is asked to wait by default: long enough for the
/// holder of a lock to finish a sale, short enough that a rush still sells out.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_millis(20);

/// A cancelled order: its unit went back into stock, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cancellation {
    /// The order that was cancelled.
    pub order_id: OrderId,
    /// Its ticket.
    pub ticket_id: TicketId,
    /// Its buyer.
    pub user_id: UserId,
    /// Always `"cancelled"`, so the answer reads on its own.
    pub status: &'static str,
}

/// Why an order could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such order for this ticket (never existed).
    #[error("no such order")]
    NotFound,
    /// The order belongs to another buyer.
    #[error("this order belongs to another user")]
    Forbidden,
    /// Anything a purchase can also run into (busy, unavailable, a bug).
    #[error(transparent)]
    Purchase(#[from] PurchaseError),
}

/// The claim a request holds on its `Idempotency-Key` (see
/// [`crate::idempotency`]): which key, and the owner token that proves this
/// request still holds it.
///
/// It travels inside [`Purchase`], as a value, so that whoever writes the
/// order can record the request's answer in the order's own transaction
/// ([`crate::db::insert_order`] does). A strategy that spawns a task or
/// writes its own INSERT must carry it along: the compiler, not a comment,
/// reminds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The key, as the client sent it.
    pub key: String,
    /// The buyer the key belongs to: keys are scoped per buyer.
    pub user: UserId,
    /// This claim's owner token: a takeover by another request changes it,
    /// and then this claim can no longer complete the key.
    pub owner: i64,
}

/// One purchase request: who buys which ticket, and the idempotency claim the
/// request holds, if it carries a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// The ticket to buy.
    pub ticket: TicketId,
    /// The buyer.
    pub user: UserId,
    /// The request's claim on its `Idempotency-Key`; `None` without a key.
    pub claim: Option<Claim>,
}

impl Purchase {
    /// A purchase without an idempotency key.
    pub fn new(ticket: TicketId, user: UserId) -> Self {
        Self {
            ticket,
            user,
            claim: None,
        }
    }
}

/// One way of selling a ticket safely (or, in the early levels, unsafely).
///
/// Every strategy of every level implements this trait, and the HTTP API only
/// ever calls it: that is what lets one load run be pointed at any level.
/// Adding a strategy means writing one implementation and adding one line to
/// its level's strategy table.
#[async_trait]
pub trait SellTickets: Send + Sync + 'static {
    /// The strategy's name as the contract spells it (`naive`, `mutex`, ...).
    fn name(&self) -> &'static str;

    /// Sells one unit of `purchase.ticket` to `purchase.user`, or says why
    /// not. An order written to PostgreSQL goes through
    /// [`crate::db::insert_order`] with this very `purchase`, so that its
    /// idempotency claim is completed in the order's transaction.
    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError>;

    /// Checks the services this strategy needs beyond the database (Redis,
    /// for instance). `/health` calls it; the default needs nothing more.
    async fn check_health(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Cancels `order` and puts its unit back, once.
    ///
    /// `None` (the default) means "the shared database cancellation is
    /// safe here": it moves the order out and runs `stock = stock + 1` in one
    /// transaction, which is correct next to any strategy whose own writes
    /// are relative or guarded by a row lock, a version or SERIALIZABLE.
    /// A strategy that writes an absolute stock under a lock of its own
    /// (Level 1, Level 3) must take that lock around the cancellation, and
    /// overrides this.
    async fn cancel(
        &self,
        _ticket: TicketId,
        _order: OrderId,
        _user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive_and_fit_in_a_bigint() {
        assert_eq!(TicketId::parse(1).unwrap().get(), 1);
        assert_eq!(UserId::parse(i64::MAX as i128).unwrap().get(), i64::MAX);
        for bad in [0, -1, i64::MIN as i128, i64::MAX as i128 + 1] {
            let err = UserId::parse(bad).unwrap_err();
            assert_eq!(err.field, "user_id");
            assert_eq!(err.got, bad);
        }
    }

    #[test]
    fn every_outcome_has_a_stable_code() {
        assert_eq!(PurchaseError::SoldOut.code(), "sold_out");
        assert_eq!(PurchaseError::AlreadyPurchased.code(), "already_purchased");
        assert_eq!(PurchaseError::busy("test").code(), "busy");
        assert_eq!(PurchaseError::NotFound.code(), "not_found");
    }
}
