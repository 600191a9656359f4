//! The waiting room: one line per show, in Redis, moved by every server.
//!
//! 10,000 people want 1,000 seats at 20:00. Let them all at the seat map at
//! once and the database serves 10,000 seat maps and 10,000 hold attempts
//! for seats that went in the first second. The waiting room lets
//! `--active-limit` of them in at a time, in the order they arrived; the
//! rest wait, polling, and are told how long to wait ([`hint`]).
//!
//! **The mechanism.** Everything that decides lives in Redis, in Lua
//! scripts (`lua/`), each beginning with the same `advance` function:
//! expire the admitted users who idled past `--admitted-ttl-ms`, then admit
//! the lowest numbers waiting until the limit is full. Redis runs one
//! script at a time, so "count the admitted, pop the next number, admit
//! it" cannot interleave with another server's; the arrival number comes
//! from one `INCR` per show, so two servers never hand out the same number.
//!
//! **No admitting server.** Admission happens inside whichever script runs
//! next: a join, a poll, a hold, a payment, or the ticker every server runs
//! ([`spawn_ticker`]). Kill any server and the others keep the line moving;
//! there is no leader to elect and nothing to hand over.
//!
//! **What it guarantees.** Admission strictly in `number` order; at most
//! `--active-limit` admitted and not finished at any moment (the scripts
//! record the largest count ever seen, `max_active`, to prove it); a token
//! only its user can use, for its show ([`token`]).
//!
//! **What it does not.** Redis holds the line in memory. A Redis restart
//! without an append-only file forgets it: every token is then
//! `token_invalid`, numbers start again from 1 and whoever rejoins first is
//! first. Holds and payments already in PostgreSQL are not affected.
//! `docs/07-waiting-room.md` tells the lesson and its figures.

pub mod hint;
pub mod stats;
pub mod token;

use std::time::Duration;

use redis::Script;
use serde::Serialize;
use ticket_core::redis_conn::RedisConnection;
use tokio::sync::OnceCell;

use crate::error::BoxError;
use token::Token;

/// The waiting room's settings; every server sharing a Redis must use the
/// same ones (the scripts take them from whoever runs them).
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Most users admitted and not finished at once.
    pub active_limit: u32,
    /// An admitted user who does nothing this long loses the place.
    pub admitted_ttl: Duration,
}

/// Where a user stands, as `POST /queue` and `GET /queue/{token}` tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In line.
    Waiting,
    /// Let in: may hold seats and pay.
    Admitted,
    /// Their turn is over: idled out, or paid.
    Expired,
}

/// The answer to a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Joined {
    /// The token to carry in `Queue-Token`.
    pub token: String,
    /// The place in the arrival order of the show.
    pub number: i64,
    /// Where the user stands now.
    pub status: Status,
    /// 1 = next in line; 0 when not waiting.
    pub position: u64,
    /// When to poll next (0 once admitted).
    pub retry_after_ms: u64,
    /// Whether this join made the entry (201), or found it (200).
    #[serde(skip)]
    pub created: bool,
}

/// The answer to a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Polled {
    /// The place in the arrival order.
    pub number: i64,
    /// Where the user stands now.
    pub status: Status,
    /// 1 = next in line; 0 when not waiting.
    pub position: u64,
    /// When to poll next.
    pub retry_after_ms: u64,
}

/// What a token is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Holding seats: the user must be admitted now; it counts as activity.
    Hold,
    /// Paying: admitted, or finished (so a payment retried with its
    /// `Idempotency-Key` after its answer was lost still replays).
    Pay,
}

/// The waiting room of every show, on one Redis.
pub struct Queue {
    redis_url: String,
    conn: OnceCell<RedisConnection>,
    prefix: String,
    settings: QueueSettings,
    join: Script,
    status: Script,
    touch: Script,
    finish: Script,
    tick: Script,
}

/// A script: the shared `advance.lua`, then its own body.
fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/advance.lua")))
}

impl Queue {
    /// The waiting room on `redis_url`, with keys under `prefix` (which
    /// names the database, so tests on one Redis do not share lines).
    pub fn new(redis_url: &str, prefix: &str, settings: QueueSettings) -> anyhow::Result<Self> {
        Ok(Self {
            redis_url: {
                crate::redis_conn::check_url(redis_url)?;
                redis_url.to_owned()
            },
            conn: OnceCell::new(),
            prefix: prefix.to_owned(),
            settings,
            join: script(include_str!("lua/join.lua")),
            status: script(include_str!("lua/status.lua")),
            touch: script(include_str!("lua/touch.lua")),
            finish: script(include_str!("lua/finish.lua")),
            tick: script(include_str!("lua/tick.lua")),
        })
    }

    /// The settings the scripts run with.
    pub fn settings(&self) -> QueueSettings {
        self.settings
    }

    async fn conn(&self) -> Result<RedisConnection, BoxError> {
        let conn = self
            .conn
            .get_or_try_init(|| crate::redis_conn::manager(&self.redis_url))
            .await?;
        Ok(conn.clone())
    }

    /// The keys of one show's line start with this. It holds the show's
    /// hash tag (`{show:<id>}`): the scripts build every key of a line
    /// from it, and a Redis Cluster runs a script only where all its keys
    /// share one slot. The scripts are passed it as their one key (KEYS[1])
    /// so that a cluster client sends them to that slot's master.
    pub fn base(&self, show_id: i64) -> String {
        line_base(&self.prefix, show_id)
    }

    fn shows_key(&self) -> String {
        format!("{}:q:shows", self.prefix)
    }

    /// Runs one of the per-entry scripts (`status`, `touch`, `finish`).
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        token: &Token,
    ) -> Result<T, BoxError> {
        let base = self.base(token.show_id);
        script
            .key(&base)
            .arg(&base)
            .arg(self.settings.active_limit)
            .arg(self.settings.admitted_ttl.as_millis() as u64)
            .arg(token.number)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(crate::error::redis_error)
    }

    fn hint(&self, position: u64, recent_admits: u64) -> u64 {
        hint::jitter(hint::retry_after_ms(
            position,
            recent_admits,
            self.settings.active_limit,
            self.settings.admitted_ttl,
        ))
    }

    /// Puts `user` in line for `show_id` (the caller checked the show
    /// exists), or finds them there already.
    pub async fn join(&self, show_id: i64, user: i64) -> Result<Joined, BoxError> {
        let base = self.base(show_id);
        let mut conn = self.conn().await?;
        let fields: Vec<String> = self
            .join
            .key(&base)
            .arg(&base)
            .arg(self.settings.active_limit)
            .arg(self.settings.admitted_ttl.as_millis() as u64)
            .arg(user)
            .arg(token::new_secret())
            .invoke_async(&mut conn)
            .await
            .map_err(crate::error::redis_error)?;
        let [number, secret, state, position, recent, created] = fields.as_slice() else {
            return Err(BoxError::Unexpected(anyhow::anyhow!(
                "join.lua answered {fields:?}"
            )));
        };
        if created == "1" {
            // The ticker's list of lines; apart from the line's own keys (see
            // join.lua). A tick before this only misses the line once.
            let _: i64 = redis::cmd("SADD")
                .arg(self.shows_key())
                .arg(show_id)
                .query_async(&mut conn)
                .await
                .map_err(crate::error::redis_error)?;
        }
        let number = parse_number(number)?;
        let (position, recent) = (parse_count(position)?, parse_count(recent)?);
        Ok(Joined {
            token: Token::render(show_id, number, secret),
            number,
            status: status_of(state),
            position,
            retry_after_ms: self.hint(position, recent),
            created: created == "1",
        })
    }

    /// Reads a token's entry, moving the line first; `token_invalid` unless
    /// the token's secret is the stored one. Returns the entry's user, its
    /// raw state and the poll answer.
    async fn lookup(&self, token: &Token) -> Result<(i64, String, Polled), BoxError> {
        let fields: Vec<String> = self.run(&self.status, token).await?;
        let [user, secret, state, position, recent] = fields.as_slice() else {
            // No such entry: never issued, or Redis forgot it (a restart).
            return Err(BoxError::TokenInvalid);
        };
        if !token.proves(secret) {
            return Err(BoxError::TokenInvalid);
        }
        let position = parse_count(position)?;
        let polled = Polled {
            number: token.number,
            status: status_of(state),
            position,
            retry_after_ms: self.hint(position, parse_count(recent)?),
        };
        Ok((parse_number(user)?, state.clone(), polled))
    }

    /// `GET /queue/{token}`: where the token's holder stands.
    pub async fn poll(&self, raw: &str) -> Result<Polled, BoxError> {
        let token = Token::parse(raw).ok_or(BoxError::TokenInvalid)?;
        Ok(self.lookup(&token).await?.2)
    }

    /// Checks the `Queue-Token` of a hold or payment by `user` on
    /// `show_id`: 401 `token_required` without one, 401 `token_invalid` if
    /// it is not an issued token of this user for this show, 403
    /// `not_admitted` if its holder is not (or no longer) admitted.
    pub async fn admit(
        &self,
        raw: Option<&[u8]>,
        show_id: i64,
        user: i64,
        purpose: Purpose,
    ) -> Result<Token, BoxError> {
        let raw = raw.ok_or(BoxError::TokenRequired)?;
        let token = std::str::from_utf8(raw)
            .ok()
            .and_then(Token::parse)
            .ok_or(BoxError::TokenInvalid)?;
        if token.show_id != show_id {
            return Err(BoxError::TokenInvalid);
        }
        let (owner, state, _) = self.lookup(&token).await?;
        if owner != user {
            return Err(BoxError::TokenInvalid);
        }
        let allowed = match purpose {
            Purpose::Hold => state == "admitted",
            Purpose::Pay => state == "admitted" || state == "finished",
        };
        if !allowed {
            return Err(BoxError::NotAdmitted);
        }
        if purpose == Purpose::Hold {
            // Activity: the idle clock starts again (unless it ran out
            // between the two scripts, which the next check will see).
            let _: String = self.run(&self.touch, &token).await?;
        }
        Ok(token)
    }

    /// A payment went through: the holder is finished and the place goes
    /// to the next in line. A failure is logged; the place then frees when
    /// the idle timeout runs out.
    pub async fn finish(&self, token: &Token) {
        if let Err(err) = self.run::<String>(&self.finish, token).await {
            tracing::warn!(error = %err, "could not finish a queue entry");
        }
    }

    /// Moves every show's line once; returns how many lines there are.
    pub async fn tick(&self) -> Result<u64, BoxError> {
        let mut conn = self.conn().await?;
        let shows: Vec<i64> = redis::cmd("SMEMBERS")
            .arg(self.shows_key())
            .query_async(&mut conn)
            .await
            .map_err(crate::error::redis_error)?;
        for &show in &shows {
            let base = self.base(show);
            let _: i64 = self
                .tick
                .key(&base)
                .arg(&base)
                .arg(self.settings.active_limit)
                .arg(self.settings.admitted_ttl.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(crate::error::redis_error)?;
        }
        Ok(shows.len() as u64)
    }
}

/// The keys of one show's line start with this (see [`Queue::base`]).
pub(crate) fn line_base(prefix: &str, show_id: i64) -> String {
    format!("{prefix}:q:{{show:{show_id}}}")
}

fn status_of(state: &str) -> Status {
    match state {
        "waiting" => Status::Waiting,
        "admitted" => Status::Admitted,
        _ => Status::Expired,
    }
}

fn parse_number(raw: &str) -> Result<i64, BoxError> {
    raw.parse()
        .map_err(|_| BoxError::Unexpected(anyhow::anyhow!("a queue script answered {raw:?}")))
}

fn parse_count(raw: &str) -> Result<u64, BoxError> {
    raw.parse()
        .map_err(|_| BoxError::Unexpected(anyhow::anyhow!("a queue script answered {raw:?}")))
}

mod ticker;
pub use ticker::spawn_ticker;
