//! What a decider keeps in memory: for each ticket of its partition, the
//! stock and who holds an order. And the one function that decides a
//! request against it.
//!
//! Deciding needs no lock: only the partition's owner ever runs
//! [`decide`] for these tickets, one request after the other, in the order
//! the stream gave them. That is the whole lesson of this level. The state
//! is a *cache* of PostgreSQL, checked against the ticket row (its version
//! and stock) in every batch's transaction before it is trusted.

use std::collections::HashMap;

use ticket_core::{OrderId, TicketId, UserId};

use crate::log::Command;

/// One ticket as the decider knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketState {
    /// Units left.
    pub stock: i32,
    /// The ticket row's version when this state matched it. Every batch
    /// bumps it; a reset puts it back to 0. A row whose (version, stock)
    /// differs from ours was changed behind our back: we reload.
    pub version: i64,
    /// Who holds an order, and which. A sale decided in the current batch
    /// has [`PENDING_ORDER`] until its row is inserted.
    pub buyers: HashMap<UserId, OrderId>,
}

/// The order id of a sale decided in this batch, before PostgreSQL gave
/// it its id.
pub const PENDING_ORDER: OrderId = OrderId(0);

/// The tickets of one partition.
pub type PartitionState = HashMap<TicketId, TicketState>;

/// What [`decide`] said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sold: one unit taken, the buyer recorded (order id to come).
    Sold,
    /// No stock left.
    SoldOut,
    /// The buyer already holds this ticket.
    AlreadyPurchased,
    /// There is no such ticket.
    NotFound,
    /// The order was the asker's: its unit is back in stock.
    Cancelled,
    /// The order belongs to someone else.
    Forbidden,
    /// The order is not held now: it was cancelled before, or never
    /// existed. Only PostgreSQL's `cancelled_orders` can tell.
    AskCancelled,
}

/// Decides `command` against `state` (`None`: the ticket does not exist),
/// changing the state if it sells or cancels.
pub fn decide(state: Option<&mut TicketState>, command: Command) -> Decision {
    let Some(ticket) = state else {
        return Decision::NotFound;
    };
    match command {
        Command::Buy { user, .. } => {
            // The buyer first, then the stock: a second click by someone
            // who holds the ticket is "already purchased", even when sold out.
            if ticket.buyers.contains_key(&user) {
                Decision::AlreadyPurchased
            } else if ticket.stock <= 0 {
                Decision::SoldOut
            } else {
                ticket.stock -= 1;
                ticket.buyers.insert(user, PENDING_ORDER);
                Decision::Sold
            }
        }
        Command::Cancel { user, order, .. } => {
            let holder = ticket
                .buyers
                .iter()
                .find(|(_, held)| **held == order && order != PENDING_ORDER)
                .map(|(holder, _)| *holder);
            match holder {
                Some(holder) if holder == user => {
                    ticket.buyers.remove(&holder);
                    ticket.stock += 1;
                    Decision::Cancelled
                }
                Some(_) => Decision::Forbidden,
                None => Decision::AskCancelled,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ticket: i128, user: i128) -> (TicketId, UserId) {
        (
            TicketId::parse(ticket).unwrap(),
            UserId::parse(user).unwrap(),
        )
    }

    fn buy(user: i128) -> Command {
        let (ticket, user) = ids(1, user);
        Command::Buy { ticket, user }
    }

    #[test]
    fn requests_in_order_sell_exactly_the_stock_once_per_buyer() {
        let mut ticket = TicketState {
            stock: 2,
            ..TicketState::default()
        };
        let decisions: Vec<Decision> = [1, 1, 2, 3]
            .into_iter()
            .map(|user| decide(Some(&mut ticket), buy(user)))
            .collect();
        assert_eq!(
            decisions,
            [
                Decision::Sold,
                Decision::AlreadyPurchased,
                Decision::Sold,
                Decision::SoldOut
            ]
        );
        assert_eq!(ticket.stock, 0);
        assert_eq!(ticket.buyers.len(), 2);
        assert_eq!(decide(None, buy(4)), Decision::NotFound);
    }

    #[test]
    fn a_buyer_who_holds_the_ticket_hears_already_purchased_even_when_sold_out() {
        let mut ticket = TicketState {
            stock: 1,
            ..TicketState::default()
        };
        assert_eq!(decide(Some(&mut ticket), buy(1)), Decision::Sold);
        assert_eq!(
            decide(Some(&mut ticket), buy(1)),
            Decision::AlreadyPurchased
        );
    }

    #[test]
    fn only_the_holder_cancels_and_the_unit_comes_back_once() {
        let (ticket_id, owner) = ids(1, 1);
        let (_, other) = ids(1, 2);
        let mut ticket = TicketState {
            stock: 0,
            version: 3,
            buyers: HashMap::from([(owner, OrderId(10))]),
        };
        let cancel = |user| Command::Cancel {
            ticket: ticket_id,
            user,
            order: OrderId(10),
        };
        assert_eq!(
            decide(Some(&mut ticket), cancel(other)),
            Decision::Forbidden
        );
        assert_eq!(
            decide(Some(&mut ticket), cancel(owner)),
            Decision::Cancelled
        );
        assert_eq!(ticket.stock, 1);
        assert_eq!(
            decide(Some(&mut ticket), cancel(owner)),
            Decision::AskCancelled
        );
        assert_eq!(ticket.stock, 1);
    }
}
