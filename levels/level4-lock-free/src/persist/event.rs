//! What travels on the stream: one sale per entry, and what becomes of it.

use redis::streams::StreamId;
use ticket_core::{TicketId, UserId};

/// One sale, as the purchase script queued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    /// The stream entry's id.
    pub entry_id: String,
    /// The order id the buyer was answered with.
    pub order_id: i64,
    /// The ticket sold.
    pub ticket: i64,
    /// The buyer.
    pub user: i64,
    /// The sale (epoch) it was sold in.
    pub epoch: i64,
    /// When Redis decided it, in microseconds since 1970.
    pub sold_us: i64,
}

impl OrderEvent {
    /// Reads an entry's fields, or says what is wrong with them.
    pub fn parse(entry: &StreamId) -> Result<Self, String> {
        let number = |field: &str| -> Result<i64, String> {
            let raw: String = entry
                .get(field)
                .ok_or_else(|| format!("malformed entry: no {field:?} field"))?;
            raw.parse::<i64>()
                .map_err(|_| format!("malformed entry: {field} = {raw:?} is not a whole number"))
        };
        let event = Self {
            entry_id: entry.id.clone(),
            order_id: number("order")?,
            ticket: number("ticket")?,
            user: number("user")?,
            epoch: number("epoch")?,
            sold_us: number("sold_us")?,
        };
        TicketId::parse(i128::from(event.ticket)).map_err(|e| format!("malformed entry: {e}"))?;
        UserId::parse(i128::from(event.user)).map_err(|e| format!("malformed entry: {e}"))?;
        if event.order_id <= 0 {
            return Err(format!(
                "malformed entry: order id {} is not positive",
                event.order_id
            ));
        }
        Ok(event)
    }
}

/// An entry on its way to the dead letters.
#[derive(Debug, Clone)]
pub(super) struct DeadLetter {
    pub(super) entry_id: String,
    pub(super) fields: Vec<(String, String)>,
    pub(super) reason: String,
    pub(super) attempts: u32,
}

impl DeadLetter {
    pub(super) fn of_entry(entry: &StreamId, reason: String, attempts: u32) -> Self {
        let mut fields: Vec<(String, String)> = entry
            .map
            .keys()
            .map(|k| (k.clone(), entry.get::<String>(k).unwrap_or_default()))
            .collect();
        fields.sort();
        Self {
            entry_id: entry.id.clone(),
            fields,
            reason,
            attempts,
        }
    }

    pub(super) fn of_event(event: &OrderEvent, reason: String, attempts: u32) -> Self {
        Self {
            entry_id: event.entry_id.clone(),
            fields: vec![
                ("order".into(), event.order_id.to_string()),
                ("ticket".into(), event.ticket.to_string()),
                ("user".into(), event.user.to_string()),
                ("epoch".into(), event.epoch.to_string()),
                ("sold_us".into(), event.sold_us.to_string()),
            ],
            reason,
            attempts,
        }
    }
}

/// What one committed batch did, entry by entry.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Inserted now.
    pub(super) persisted: Vec<String>,
    /// Already there: delivered before.
    pub(super) redelivered: Vec<String>,
    /// Sold in a sale a reset has since closed: void, like its orders.
    pub(super) voided: Vec<String>,
    /// Refused for good, with the reason.
    pub(super) refused: Vec<DeadLetter>,
}

impl Outcome {
    pub(super) fn merge(&mut self, other: Outcome) {
        self.persisted.extend(other.persisted);
        self.redelivered.extend(other.redelivered);
        self.voided.extend(other.voided);
        self.refused.extend(other.refused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        redis::Value::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
            ..StreamId::default()
        }
    }

    #[test]
    fn an_entry_is_read_back_as_the_script_wrote_it() {
        let event = OrderEvent::parse(&entry(&[
            ("order", "1700000000000001"),
            ("ticket", "7"),
            ("user", "42"),
            ("epoch", "3"),
            ("sold_us", "1700000000000001"),
        ]))
        .unwrap();
        assert_eq!(event.order_id, 1_700_000_000_000_001);
        assert_eq!((event.ticket, event.user, event.epoch), (7, 42, 3));
    }

    #[test]
    fn a_malformed_entry_says_what_is_wrong() {
        let missing = OrderEvent::parse(&entry(&[("order", "1")])).unwrap_err();
        assert!(missing.contains("ticket"), "{missing}");
        let garbage = OrderEvent::parse(&entry(&[
            ("order", "1"),
            ("ticket", "7"),
            ("user", "bob"),
            ("epoch", "1"),
            ("sold_us", "1"),
        ]))
        .unwrap_err();
        assert!(garbage.contains("user"), "{garbage}");
        let negative = OrderEvent::parse(&entry(&[
            ("order", "1"),
            ("ticket", "7"),
            ("user", "-3"),
            ("epoch", "1"),
            ("sold_us", "1"),
        ]))
        .unwrap_err();
        assert!(negative.contains("user_id"), "{negative}");
    }
}
