//! The `state-store` changelog against a real Redis, at a size where one
//! pipeline would outlast the engine's 5 s response timeout: a ticket held
//! by 100,000 buyers is written whole, replayed, rewritten whole (every
//! old record deleted), and changed by one sale and one cancellation, all
//! through the connection settings the engine itself uses.

use std::collections::HashMap;
use std::time::Duration;

use level6::changelog::{rebuild, Changelog};
use level6::log::{Answer, Command, Keys, Request};
use level6::state::{PartitionState, TicketState};
use ticket_core::services::Redis;
use ticket_core::{OrderId, TicketId, UserId};

/// Buyers holding the ticket: as many as the suite can afford in a debug
/// build on a busy machine (the takeover bench goes further).
const BUYERS: i64 = 100_000;
const P: u32 = 0;

/// A request and its answer, as a committed batch hands them to the log.
fn batch(command: Command, status: u16) -> (Request, Answer) {
    let request = Request {
        id: format!("{command:?}"),
        command,
        key: None,
        reply_to: String::new(),
    };
    let answer = Answer {
        id: request.id.clone(),
        status,
        body: String::new(),
        location: None,
    };
    (request, answer)
}

fn user(id: i64) -> UserId {
    UserId::parse(i128::from(id)).unwrap()
}

async fn stream_length(redis: &redis::aio::ConnectionManager, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut redis.clone())
        .await
        .unwrap()
}

/// A 100,000-buyer ticket's changelog is written and replayed in chunks
/// within the engine's 5 s response timeout, stays compacted (one record
/// per buyer plus one for the ticket) when it is rewritten whole, and
/// replays to exactly the state that was logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_buyer_changelog_is_written_and_replayed_within_the_timeout() {
    let server = tokio::task::spawn_blocking(Redis::from_env_or_throwaway)
        .await
        .unwrap()
        .expect("a Redis server");
    let client = redis::Client::open(server.url()).unwrap();
    // The engine's settings with a response timeout five times shorter:
    // a round trip of `CHUNK` records takes milliseconds even in a debug
    // build on a busy machine (a margin of over 100), while the whole
    // ticket as one pipeline takes seconds, so without the chunks the
    // test fails here as a ticket five times larger would against the
    // engine's 5 s.
    let config = level6::engine::redis_config().set_response_timeout(Some(Duration::from_secs(1)));
    let redis = redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let keys = Keys::new(&format!("changelog-test-{:08x}", rand::random::<u32>()));
    let stream = keys.changelog(P);
    let ticket = TicketId::parse(7).unwrap();
    let buyers: HashMap<UserId, OrderId> = (1..=BUYERS).map(|u| (user(u), OrderId(u))).collect();
    let mut state: PartitionState = HashMap::from([(
        ticket,
        TicketState {
            stock: 10,
            version: 5,
            buyers,
        },
    )]);
    let touch = batch(
        Command::Buy {
            ticket,
            user: user(1),
        },
        409,
    );

    // A reloaded ticket is written whole.
    let mut log = Changelog::default();
    log.append(
        &redis,
        &keys,
        P,
        &state,
        std::slice::from_ref(&touch.0),
        std::slice::from_ref(&touch.1),
    )
    .await
    .expect("the whole ticket is logged");
    assert_eq!(stream_length(&redis, &stream).await, BUYERS as usize + 1);
    let (replayed, mut log) = rebuild(&redis, &keys, P).await.expect("the replay");
    assert_eq!(replayed, state, "the replay gives back the logged state");

    // Reloaded again (a version jump): every old record is deleted.
    state.get_mut(&ticket).unwrap().version = 9;
    log.append(&redis, &keys, P, &state, &[touch.0], &[touch.1])
        .await
        .expect("the ticket is logged whole again");
    assert_eq!(
        stream_length(&redis, &stream).await,
        BUYERS as usize + 1,
        "compacted: the old records are gone"
    );

    // One batch: a sale and a cancellation.
    let newcomer = user(BUYERS + 1);
    let ticket_state = state.get_mut(&ticket).unwrap();
    ticket_state.buyers.insert(newcomer, OrderId(BUYERS + 1));
    ticket_state.buyers.remove(&user(2));
    ticket_state.version = 10;
    let sale = batch(
        Command::Buy {
            ticket,
            user: newcomer,
        },
        201,
    );
    let cancel = batch(
        Command::Cancel {
            ticket,
            user: user(2),
            order: OrderId(2),
        },
        200,
    );
    log.append(
        &redis,
        &keys,
        P,
        &state,
        &[sale.0, cancel.0],
        &[sale.1, cancel.1],
    )
    .await
    .expect("the batch is logged");
    assert_eq!(stream_length(&redis, &stream).await, BUYERS as usize + 1);
    let (replayed, _) = rebuild(&redis, &keys, P).await.expect("the replay");
    assert_eq!(
        replayed, state,
        "the replay has the sale and not the cancelled order"
    );
}
