//! The engine as a [`SellTickets`] strategy: what the shared API (and
//! anything else that sells through the trait) sees. Level 6's own router
//! ([`crate::http`]) serves purchases itself, to answer 202 instead of
//! waiting forever; this is the same path for callers that need a final
//! answer (a late one is `busy`, to be asked again).

use async_trait::async_trait;
use ticket_core::{
    CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};

use crate::engine::{Engine, Mode};
use crate::http::request_id;
use crate::log::{Answer, Command, Request};

/// One strategy of this level: the engine, named.
pub struct Strategy {
    /// The engine.
    pub engine: Engine,
    /// Which of the two.
    pub mode: Mode,
}

fn late() -> PurchaseError {
    PurchaseError::busy("the decider did not answer in time; the request is still in the log")
}

/// Reads a recorded refusal's `code`.
fn code(answer: &Answer) -> String {
    serde_json::from_str::<serde_json::Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[async_trait]
impl SellTickets for Strategy {
    fn name(&self) -> &'static str {
        match self.mode {
            Mode::Partitioned => "partitioned",
            Mode::StateStore => "state-store",
        }
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let key = purchase.claim.as_ref().map(|claim| claim.key.clone());
        let request = Request {
            id: request_id(purchase.ticket, purchase.user, key.as_deref()),
            command: Command::Buy {
                ticket: purchase.ticket,
                user: purchase.user,
            },
            key,
            reply_to: self.engine.instance().to_owned(),
        };
        let answer = self.engine.submit(request).await?.ok_or_else(late)?;
        match answer.status {
            201 => serde_json::from_str::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v.get("order_id")?.as_i64())
                .map(|id| Order {
                    order_id: OrderId(id),
                    ticket_id: purchase.ticket,
                    user_id: purchase.user,
                })
                .ok_or_else(|| anyhow::anyhow!("an unreadable 201: {}", answer.body).into()),
            _ => Err(match code(&answer).as_str() {
                "sold_out" => PurchaseError::SoldOut,
                "already_purchased" => PurchaseError::AlreadyPurchased,
                "not_found" => PurchaseError::NotFound,
                other => anyhow::anyhow!("an unexpected answer: {other}").into(),
            }),
        }
    }

    async fn check_health(&self) -> anyhow::Result<()> {
        self.engine.ping().await
    }

    async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        let request = Request {
            id: format!("c{:032x}", rand::random::<u128>()),
            command: Command::Cancel {
                ticket,
                user,
                order,
            },
            key: None,
            reply_to: self.engine.instance().to_owned(),
        };
        let answer = match self.engine.submit(request).await {
            Ok(Some(answer)) => answer,
            Ok(None) => return Some(Err(late().into())),
            Err(err) => return Some(Err(err.into())),
        };
        Some(match (answer.status, code(&answer).as_str()) {
            (200, _) => Ok(Cancellation {
                order_id: order,
                ticket_id: ticket,
                user_id: user,
                status: "cancelled",
            }),
            (_, "forbidden") => Err(CancelError::Forbidden),
            _ => Err(CancelError::NotFound),
        })
    }
}
