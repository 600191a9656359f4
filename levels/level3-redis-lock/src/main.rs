//! `level3`: serves the ticket API under a lock held in Redis.
//!
//! Run with (two terminals, one shared database and one shared Redis):
//!
//! ```text
//! cargo run --release -p level3 -- --port 8080 --strategy pubsub --think-time-ms 20
//! cargo run --release -p level3 -- --port 8081 --strategy pubsub --think-time-ms 20
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ticket_core::server::init_tracing();
    level3::Cli::parse().start().await?.run_until_signal().await
}
