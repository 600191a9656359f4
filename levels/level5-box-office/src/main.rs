//! `level5`: serves the box office (shows, seats, holds, wallets, payments).
//!
//! Run with (two terminals, one shared database):
//!
//! ```text
//! cargo run --release -p level5 -- --port 8080 --queue off --admin-token secret
//! cargo run --release -p level5 -- --port 8081 --queue off --admin-token secret
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ticket_core::server::init_tracing();
    level5::Cli::parse().start().await?.run_until_signal().await
}
