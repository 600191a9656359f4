//! `redis-lua`: Redis decides who gets a seat, in one Lua script; then
//! PostgreSQL records the hold.
//!
//! Level 4's idea applied to seats. Each show's seat owners live in one
//! Redis hash (seat -> hold id). `hold.lua` checks every seat asked for and,
//! only if all are free, writes them all: Redis runs one script at a time,
//! so no other buyer's check can fall between ours and our write. No row
//! lock, no version, no retry; a buyer told "taken" cost PostgreSQL one
//! short transaction (the per-user limit) and no seat row at all.
//!
//! Then the hold is written to PostgreSQL, synchronously, under the id the
//! seats were claimed with: `holds`, `hold_seats`, `seats.hold_id`, one
//! transaction. If that fails, `free.lua` gives the seats back (only those
//! this hold still owns). The sweeper, releases and late payments free seats
//! in PostgreSQL first, then here ([`HoldSeats::freed`]).
//!
//! Where it differs from Level 4: Level 4 answered the buyer before the
//! order reached PostgreSQL (a stream, a worker, a lag to drain). A hold is
//! answered only after PostgreSQL has it, because a hold is about to be
//! *paid*, and the payment's lock and the sweeper live in PostgreSQL. So
//! Redis takes the contention (who gets seat 3), PostgreSQL keeps the money.
//!
//! Loading: a show not yet in Redis (first hold, or Redis restarted) is
//! loaded from `seats.hold_id` by `load.lua`, once, under `FOR SHARE` on the
//! show's seat rows, so no release or expiry can free a seat between our
//! read and the load.
//!
//! What can still go wrong: a server that dies between freeing a seat in
//! PostgreSQL and in Redis leaves that seat looking taken (unsold, never
//! double-sold) until the show is reloaded. Redis flushed while holds are
//! in flight is the same kind of gap.

use async_trait::async_trait;
use redis::Script;
use sqlx::PgPool;
use ticket_core::redis_conn::RedisConnection;
use tokio::sync::OnceCell;

use super::{
    check_limit, insert_hold, lock_user, pause, read_seat, require_show, take_seats, FreedSeat,
    Hold, HoldRequest, HoldSeats,
};
use crate::error::{redis_error, BoxError};
use crate::Settings;

/// Holds seats in Redis with one script, then records them in PostgreSQL.
pub struct RedisLua {
    pool: PgPool,
    settings: Settings,
    redis_url: String,
    conn: OnceCell<RedisConnection>,
    prefix: OnceCell<String>,
    hold_script: Script,
    free_script: Script,
    load_script: Script,
}

impl RedisLua {
    /// Builds the strategy; needs `--redis-url`. Connects on first use.
    pub fn new(pool: PgPool, settings: Settings) -> anyhow::Result<Self> {
        let url = settings.redis_url.clone().ok_or_else(|| {
            anyhow::anyhow!("--strategy redis-lua needs --redis-url (or REDIS_URL)")
        })?;
        Ok(Self {
            pool,
            settings,
            redis_url: {
                crate::redis_conn::check_url(&url)?;
                url
            },
            conn: OnceCell::new(),
            prefix: OnceCell::new(),
            hold_script: Script::new(include_str!("lua/hold.lua")),
            free_script: Script::new(include_str!("lua/free.lua")),
            load_script: Script::new(include_str!("lua/load.lua")),
        })
    }

    async fn conn(&self) -> Result<RedisConnection, BoxError> {
        let conn = self
            .conn
            .get_or_try_init(|| crate::redis_conn::manager(&self.redis_url))
            .await?;
        Ok(conn.clone())
    }

    /// The show's two keys. The prefix names this database, so two
    /// databases (tests: one per test) can share one Redis. Both carry the
    /// show's hash tag: `hold.lua` and `load.lua` touch both, and a Redis
    /// Cluster runs a script only when all its keys share a slot.
    async fn keys(&self, show_id: i64) -> Result<(String, String), BoxError> {
        let prefix = self
            .prefix
            .get_or_try_init(|| async {
                let db: String = sqlx::query_scalar("SELECT current_database()")
                    .fetch_one(&self.pool)
                    .await?;
                Ok::<_, BoxError>(format!("level5:{db}"))
            })
            .await?;
        Ok(show_keys(prefix, show_id))
    }

    /// Runs `hold.lua`; loads the show first when Redis does not have it.
    async fn claim(&self, show_id: i64, hold_id: i64, seats: &[i32]) -> Result<(), BoxError> {
        let (owners, loaded) = self.keys(show_id).await?;
        for _ in 0..3 {
            let mut invocation = self.hold_script.key(&owners);
            invocation.key(&loaded).arg(hold_id);
            for seat in seats {
                invocation.arg(*seat);
            }
            let answer: Vec<i64> = invocation
                .invoke_async(&mut self.conn().await?)
                .await
                .map_err(redis_error)?;
            match answer.first() {
                Some(1) => return Ok(()),
                Some(0) => {
                    let mut taken: Vec<i32> = answer[1..].iter().map(|s| *s as i32).collect();
                    taken.sort_unstable();
                    return Err(BoxError::SeatsUnavailable(taken));
                }
                _ => self.load(show_id, &owners, &loaded).await?,
            }
        }
        Err(BoxError::Busy("the show could not be loaded into Redis"))
    }

    /// Loads the show's taken seats into Redis, once, while no release or
    /// expiry can change them (`FOR SHARE` on the show's seat rows).
    async fn load(&self, show_id: i64, owners: &str, loaded: &str) -> Result<(), BoxError> {
        let mut tx = self.pool.begin().await?;
        let taken: Vec<(i32, Option<i64>)> = sqlx::query_as(
            "SELECT seat_no, hold_id FROM seats WHERE show_id = $1 ORDER BY seat_no FOR SHARE",
        )
        .bind(show_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut invocation = self.load_script.key(owners);
        invocation.key(loaded);
        for (seat, hold) in taken {
            if let Some(hold) = hold {
                invocation.arg(seat).arg(hold);
            }
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        tx.commit().await?;
        Ok(())
    }

    /// Loads the show into Redis when it is not there yet, *before* the
    /// hold takes its connection: loading needs a connection of its own,
    /// and a crowd of first holds each holding one while waiting for a
    /// second would empty the pool (a deadlock until the acquire timeout).
    async fn ensure_loaded(&self, show_id: i64) -> Result<(), BoxError> {
        let (owners, loaded) = self.keys(show_id).await?;
        let there: bool = redis::cmd("EXISTS")
            .arg(&loaded)
            .query_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        if !there {
            self.load(show_id, &owners, &loaded).await?;
        }
        Ok(())
    }

    async fn unclaim(&self, show_id: i64, hold_id: i64, seats: &[i32]) -> Result<(), BoxError> {
        let (owners, _) = self.keys(show_id).await?;
        let mut invocation = self.free_script.key(&owners);
        invocation.arg(hold_id);
        for seat in seats {
            invocation.arg(*seat);
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

/// The owners hash and the loaded flag of one show, under its hash tag.
pub(crate) fn show_keys(prefix: &str, show_id: i64) -> (String, String) {
    (
        format!("{prefix}:{{show:{show_id}}}:owners"),
        format!("{prefix}:{{show:{show_id}}}:loaded"),
    )
}

#[async_trait]
impl HoldSeats for RedisLua {
    fn name(&self) -> &'static str {
        "redis-lua"
    }

    async fn hold(&self, request: &HoldRequest) -> Result<Hold, BoxError> {
        self.ensure_loaded(request.show_id).await?;
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, request.user).await?;
        require_show(&mut tx, request.show_id).await?;
        check_limit(&mut tx, request, self.settings.max_seats).await?;
        let mut rows = Vec::with_capacity(request.seats.len());
        for seat in &request.seats {
            rows.push(read_seat(&mut tx, request.show_id, *seat, false).await?);
        }
        let hold_id: i64 = sqlx::query_scalar("SELECT nextval('holds_id_seq')")
            .fetch_one(&mut *tx)
            .await?;
        pause(&self.settings).await;
        self.claim(request.show_id, hold_id, &request.seats).await?;
        // From here the seats are ours in Redis: record them, or give them back.
        let recorded = async {
            let hold = insert_hold(
                &mut tx,
                request,
                &rows,
                self.settings.hold_ttl,
                Some(hold_id),
            )
            .await?;
            take_seats(&mut tx, &hold).await?;
            tx.commit().await?;
            Ok::<_, BoxError>(hold)
        }
        .await;
        if recorded.is_err() {
            if let Err(err) = self.unclaim(request.show_id, hold_id, &request.seats).await {
                tracing::warn!(error = %err, hold_id, "could not give back seats claimed in Redis");
            }
        }
        recorded
    }

    async fn freed(&self, seats: &[FreedSeat]) -> anyhow::Result<()> {
        let mut by_hold: std::collections::BTreeMap<(i64, i64), Vec<i32>> = Default::default();
        for seat in seats {
            by_hold
                .entry((seat.show_id, seat.hold_id))
                .or_default()
                .push(seat.seat_no);
        }
        for ((show_id, hold_id), seats) in by_hold {
            self.unclaim(show_id, hold_id, &seats)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::show_keys;
    use crate::queue::line_base;
    use ticket_core::redis_conn::assert_one_slot;

    /// Every key one Level 5 script touches hashes to one slot, so a Redis
    /// Cluster runs it rather than refusing it with CROSSSLOT: the two keys
    /// of `hold.lua`/`load.lua`/`free.lua`, and every key the waiting
    /// room's scripts build from a line's base (see `queue/lua/advance.lua`).
    #[test]
    fn every_script_call_keeps_its_keys_in_one_slot() {
        for show in [1, 2, 77, 123_456] {
            let (owners, loaded) = show_keys("level5:ticket_rush_test_42", show);
            assert_one_slot("hold.lua, load.lua", &[&owners, &loaded]);
            let base = line_base("level5:ticket_rush_test_42", show);
            let line: Vec<String> = [
                "", ":seq", ":waiting", ":active", ":e:17", ":users", ":admits", ":log", ":stats",
            ]
            .iter()
            .map(|suffix| format!("{base}{suffix}"))
            .collect();
            assert_one_slot("the waiting room's scripts", &line);
        }
    }
}
