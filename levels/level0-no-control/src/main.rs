//! `level0`: serves the ticket API with no concurrency control.
//!
//! Run with:
//!
//! ```text
//! cargo run --release -p level0 -- --port 8080 --think-time-ms 20
//! curl -s -XPOST localhost:8080/tickets/1/orders -H 'content-type: application/json' -d '{"user_id": 1}'
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ticket_core::server::init_tracing();
    level0::Cli::parse().start().await?.run_until_signal().await
}
