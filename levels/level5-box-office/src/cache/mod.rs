//! The read cache: `GET /shows` and the static part of each seat map
//! (seat, grade, price) from Redis, with a TTL, and protected against the
//! stampede.
//!
//! **The stampede.** A popular entry expires while 1,000 readers want it.
//! Each of them misses, each asks the database, and the database gets
//! 1,000 copies of the same query at the worst moment (the entry was
//! popular because the traffic is high). The cure has two layers:
//!
//! 1. **Single flight in a process**: readers of one key that miss wait on
//!    one `tokio::sync::Mutex` per key; the first loads, the others find
//!    the value when they get the lock. An async mutex, not std's: its
//!    guard is held across the load's `.await`.
//! 2. **A Redis lock across processes**: the one loader per process then
//!    takes `SET <key>:lock NX PX 5000`. The winner loads and fills the
//!    entry; the other servers' loaders wait for the entry to appear (and
//!    load themselves only if the lock's holder died: the lock lapses).
//!
//! So 1,000 readers on two servers of an expired entry cost one query.
//! `--cache-guard off` keeps the naive version (every miss loads) to show
//! the stampede; `--think-time-ms` widens the load so it reproduces.
//!
//! Redis down is not an outage for reads: the cache is skipped and the
//! database answers (slower, but answers).

pub mod reads;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ticket_core::redis_conn::RedisConnection;
use tokio::sync::OnceCell;

use crate::error::{redis_error, BoxError};

/// How long a loader may hold a key's Redis lock before others give up
/// waiting and load themselves.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How often a waiting reader looks for the entry another server loads.
const WAIT_STEP: Duration = Duration::from_millis(5);

/// The cache's settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long `GET /shows` is served from the cache (its `available`
    /// counts are at most this old).
    pub shows_ttl: Duration,
    /// How long a seat map's static part is kept (it changes only when an
    /// admin changes the show, which invalidates it).
    pub seat_map_ttl: Duration,
    /// Single flight and the Redis lock; `false` is the broken naive cache.
    pub guard: bool,
}

/// A Redis cache with a stampede guard; `None` inside means no cache.
pub struct Cache {
    redis_url: Option<String>,
    conn: OnceCell<RedisConnection>,
    prefix: String,
    settings: CacheSettings,
    /// One async mutex per key, for the single flight in this process.
    /// The std mutex guards only the map and is never held across an await.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Cache {
    /// A cache on `redis_url` (none: every read goes to the database).
    pub fn new(
        redis_url: Option<&str>,
        prefix: &str,
        settings: CacheSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            redis_url: redis_url
                .map(|url| crate::redis_conn::check_url(url).map(|()| url.to_owned()))
                .transpose()?,
            conn: OnceCell::new(),
            prefix: format!("{prefix}:cache"),
            settings,
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// The full Redis key of `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    async fn conn(&self) -> Result<Option<RedisConnection>, BoxError> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let conn = self
            .conn
            .get_or_try_init(|| crate::redis_conn::manager(url))
            .await?;
        Ok(Some(conn.clone()))
    }

    /// Drops `names` from the cache (an admin changed a show). A failure
    /// is logged: the entries then live out their TTL.
    pub async fn invalidate(&self, names: &[String]) {
        let Ok(Some(mut conn)) = self.conn().await else {
            return;
        };
        let keys: Vec<String> = names.iter().map(|n| self.key(n)).collect();
        let deleted: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        if let Err(err) = deleted {
            tracing::warn!(error = %err, "could not invalidate cached entries");
        }
    }

    /// The value of `name`: from Redis, or loaded by `load` (once, however
    /// many readers miss at once) and kept for `ttl`.
    pub async fn get_or_load<F, Fut>(
        &self,
        name: &str,
        ttl: Duration,
        load: F,
    ) -> Result<String, BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<String, BoxError>>,
    {
        let conn = match self.conn().await {
            Ok(Some(conn)) => conn,
            Ok(None) => return load().await,
            Err(err) => {
                tracing::warn!(error = %err, "cache unavailable; reading the database");
                return load().await;
            }
        };
        let key = self.key(name);
        match self.cached_or_load(conn, &key, ttl, &load).await {
            Ok(value) => Ok(value),
            Err(BoxError::Unavailable(err)) => {
                tracing::warn!(error = %err, "cache unavailable; reading the database");
                load().await
            }
            Err(err) => Err(err),
        }
    }

    async fn cached_or_load<F, Fut>(
        &self,
        mut conn: RedisConnection,
        key: &str,
        ttl: Duration,
        load: &F,
    ) -> Result<String, BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<String, BoxError>>,
    {
        if let Some(value) = get(&mut conn, key).await? {
            return Ok(value);
        }
        if !self.settings.guard {
            // BROKEN on purpose: every reader that missed loads.
            let value = load().await?;
            set(&mut conn, key, &value, ttl).await?;
            return Ok(value);
        }
        let flight = self.flight(key);
        let _one_per_process = flight.lock().await;
        // The reader before us in this process may have filled it.
        if let Some(value) = get(&mut conn, key).await? {
            return Ok(value);
        }
        loop {
            if let Some(lock) = try_lock(&mut conn, key).await? {
                let loaded = load().await;
                if let Ok(value) = &loaded {
                    set(&mut conn, key, value, ttl).await?;
                }
                unlock(&mut conn, key, &lock).await?;
                return loaded;
            }
            // Another server loads: wait for its value, or for its lock
            // to go (it finished without a value, or died).
            while lock_held(&mut conn, key).await? {
                tokio::time::sleep(WAIT_STEP).await;
            }
            if let Some(value) = get(&mut conn, key).await? {
                return Ok(value);
            }
        }
    }

    fn flight(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self
            .flights
            .lock()
            .expect("the flights map is never poisoned");
        flights.entry(key.to_owned()).or_default().clone()
        // The std guard drops here, before anyone awaits.
    }
}

async fn get(conn: &mut RedisConnection, key: &str) -> Result<Option<String>, BoxError> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(redis_error)
}

async fn set(
    conn: &mut RedisConnection,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<(), BoxError> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64)
        .query_async(conn)
        .await
        .map_err(redis_error)
}

/// Takes `<key>:lock` if nobody has it; returns the value that proves it
/// is ours (so we never delete another loader's lock).
async fn try_lock(conn: &mut RedisConnection, key: &str) -> Result<Option<String>, BoxError> {
    let mine = format!("{:032x}", rand::random::<u128>());
    let taken: Option<String> = redis::cmd("SET")
        .arg(format!("{key}:lock"))
        .arg(&mine)
        .arg("NX")
        .arg("PX")
        .arg(LOCK_TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(taken.map(|_| mine))
}

async fn lock_held(conn: &mut RedisConnection, key: &str) -> Result<bool, BoxError> {
    redis::cmd("EXISTS")
        .arg(format!("{key}:lock"))
        .query_async(conn)
        .await
        .map_err(redis_error)
}

/// Deletes the lock only if it is still ours (compare and delete, atomic).
async fn unlock(conn: &mut RedisConnection, key: &str, mine: &str) -> Result<(), BoxError> {
    let script = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    );
    let _: i64 = script
        .key(format!("{key}:lock"))
        .arg(mine)
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(())
}
