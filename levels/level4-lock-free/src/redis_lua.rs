//! `redis-lua`: no lock. Redis decides each sale with one Lua script and
//! the order reaches PostgreSQL afterwards.
//!
//! A purchase is one round trip to Redis:
//!
//! ```text
//! buyer --POST--> server --EVALSHA purchase.lua--> Redis   (decides, queues the order)
//!       <--201--- server <--{sold, order id}------
//!                                  ... later ...
//!                 worker <--XREADGROUP------------ Redis
//!                 worker --INSERT ... ON CONFLICT DO NOTHING; UPDATE stock; COMMIT--> PostgreSQL
//!                 worker --XACK------------------> Redis
//! ```
//!
//! The script (`lua/purchase.lua`) is the whole of the concurrency control:
//! Redis runs one script at a time, so "is this buyer new, is there stock,
//! then take one, remember the buyer, queue the order" happens with no other
//! buyer in between, on any number of servers. Nothing waits for anything:
//! there is no lock to queue on, no row to contend for, no transaction to
//! retry. A sold-out ticket is answered by Redis alone.
//!
//! PostgreSQL is touched in two places only: to load a sale into Redis (the
//! first purchase of a sale finds `not_loaded`; one load per server at a
//! time, see [`crate::load`]), and by the worker ([`crate::persist`]).
//!
//! `--think-time-ms` pauses before the script: time a real sale spends
//! before deciding (a payment check, say). It cannot open a race, because
//! the decision is the script and the script has no gap; it only adds
//! latency, in parallel, to every buyer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use ticket_core::metrics::Metrics;
use ticket_core::strategy::StrategyContext;
use ticket_core::{
    CancelError, Cancellation, Order, OrderId, Purchase, PurchaseError, SellTickets, TicketId,
    UserId,
};
use tokio::sync::watch;

use crate::persist::{sleep_unless, Backoff, Worker};
use crate::store::{Decision, RedisConn, SaleStore, StoreError, RESPONSE_TIMEOUT};
use crate::Level4Config;

/// Sells from Redis with one Lua script per purchase.
pub struct RedisLua {
    ctx: StrategyContext,
    store: Arc<LazyStore>,
    /// One async mutex per ticket, for loading only: when 1000 buyers find
    /// a sale not loaded yet, one of them loads it and the others wait for
    /// that load instead of each asking PostgreSQL. The map's own lock is a
    /// `std::sync::Mutex` taken and dropped with no `.await` in between.
    loading: Mutex<HashMap<TicketId, Arc<tokio::sync::Mutex<()>>>>,
    /// Tells the background tasks (reset listener, worker) to stop when the
    /// strategy, and so the server, goes away.
    _shutdown: watch::Sender<bool>,
    /// A throwaway Redis started for this server, if any.
    _redis: Option<Arc<ticket_core::services::Redis>>,
}

/// The [`SaleStore`], opened on first use: opening it reads the database's
/// namespace, which needs an `.await` that building a strategy cannot do.
pub(crate) struct LazyStore {
    pool: sqlx::PgPool,
    redis: RedisConn,
    cell: OnceLock<SaleStore>,
}

impl LazyStore {
    /// The store, opening it if nobody has yet.
    ///
    /// Callers that find it unopened each try on their own, at the same
    /// time. Tokio's `OnceCell::get_or_try_init` would let one try at a time: with
    /// PostgreSQL down, each try waits out the pool's acquire timeout, so the
    /// thousandth buyer would wait a thousand timeouts for its 503.
    pub(crate) async fn get(&self) -> Result<&SaleStore, StoreError> {
        if let Some(store) = self.cell.get() {
            return Ok(store);
        }
        let keys = crate::keys::Keys::read(&self.pool).await?;
        // Whoever opened it first wins; every try read the same namespace.
        let _ = self.cell.set(SaleStore::with_keys(
            self.pool.clone(),
            self.redis.clone(),
            keys,
        ));
        Ok(self.cell.get().expect("the store was just set"))
    }

    /// Waits for the store, retrying until `shutdown`.
    async fn wait(&self, shutdown: &mut watch::Receiver<bool>) -> Option<SaleStore> {
        let backoff = Backoff::equal_jitter(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(2),
        );
        let mut retry = 0;
        loop {
            match self.get().await {
                Ok(store) => return Some(store.clone()),
                Err(err) => {
                    tracing::warn!(%err, "cannot open the sale store yet");
                    retry += 1;
                    if !sleep_unless(backoff.delay(retry), shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// Builds [`RedisLua`], and starts this server's reset listener and (unless
/// `--no-persist`) its persistence worker.
pub fn build(
    context: &StrategyContext,
    config: &Level4Config,
) -> anyhow::Result<Arc<dyn SellTickets>> {
    let redis = RedisConn::new(&config.redis_url, RESPONSE_TIMEOUT)?;
    let store = Arc::new(LazyStore {
        pool: context.pool.clone(),
        redis,
        cell: OnceLock::new(),
    });
    let (shutdown, stopped) = watch::channel(false);

    // The tasks hold the store and a shutdown receiver, never the strategy:
    // when the server drops the strategy, the sender goes with it and they
    // stop.
    {
        let store = store.clone();
        let metrics = context.metrics.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            if let Some(store) = store.wait(&mut stopped).await {
                crate::listen::follow_resets(store, metrics, stopped).await;
            }
        });
    }
    if config.run_worker {
        let store = store.clone();
        let metrics = context.metrics.clone();
        let options = config
            .persist
            .options(format!("{}-persist", context.instance));
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let Some(store) = store.wait(&mut stopped).await else {
                return;
            };
            match Worker::new(store, options, metrics) {
                Ok(worker) => worker.run(stopped).await,
                Err(err) => tracing::error!("cannot start the persistence worker: {err:#}"),
            }
        });
    }

    Ok(Arc::new(RedisLua {
        ctx: context.clone(),
        store,
        loading: Mutex::new(HashMap::new()),
        _shutdown: shutdown,
        _redis: config.throwaway_redis.clone(),
    }))
}

#[async_trait]
impl SellTickets for RedisLua {
    fn name(&self) -> &'static str {
        "redis-lua"
    }

    async fn purchase(&self, purchase: Purchase) -> Result<Order, PurchaseError> {
        let (ticket, user) = (purchase.ticket, purchase.user);
        let store = self.store.get().await.map_err(|e| self.failed(e))?;
        self.ctx.think().await;
        // At most three rounds: decide; if the sale is not in Redis, load it
        // and decide again. A sale that vanishes again between the load and
        // the second decision (Redis restarted without its data, twice in a
        // row) is answered busy.
        // Keys are scoped per buyer: two buyers' equal keys are two keys.
        let key = (purchase.claim.as_ref()).map(|claim| format!("{}:{}", claim.user, claim.key));
        for _ in 0..3 {
            match store.decide_keyed(ticket, user, key.as_deref()).await {
                Ok(decision @ (Decision::Sold(id) | Decision::Resold(id))) => {
                    if matches!(decision, Decision::Resold(_)) {
                        // This request's own sale, whose answer was lost.
                        self.ctx.metrics.event("idempotent_resold");
                    }
                    return Ok(Order {
                        order_id: OrderId(id),
                        ticket_id: ticket,
                        user_id: user,
                    });
                }
                Ok(Decision::AlreadyPurchased(_)) => return Err(PurchaseError::AlreadyPurchased),
                Ok(Decision::SoldOut) => return Err(PurchaseError::SoldOut),
                Ok(Decision::NotLoaded) => {
                    self.ctx.metrics.event("not_loaded");
                    self.load(store, ticket).await?;
                }
                Err(err) => return Err(self.failed(err)),
            }
        }
        Err(PurchaseError::busy("the sale is being loaded into Redis"))
    }

    /// Level 4 cannot use the shared database-only cancellation: Redis
    /// would keep the unit sold. See [`crate::cancel`].
    async fn cancel(
        &self,
        ticket: TicketId,
        order: OrderId,
        user: UserId,
    ) -> Option<Result<Cancellation, CancelError>> {
        let store = match self.store.get().await {
            Ok(store) => store,
            Err(err) => return Some(Err(CancelError::Purchase(self.failed(err)))),
        };
        let outcome = store.cancel(ticket, order, user).await;
        if outcome.is_ok() {
            self.ctx.metrics.event("cancelled");
        }
        Some(outcome)
    }

    /// Healthy means able to sell: the sale store is open (its Redis
    /// namespace was read from PostgreSQL, which a server that started
    /// while PostgreSQL was away may not have done yet) and Redis answers.
    async fn check_health(&self) -> anyhow::Result<()> {
        self.store
            .get()
            .await
            .map_err(|err| anyhow::anyhow!("the sale store is not open yet: {err}"))?;
        self.store
            .redis
            .ping()
            .await
            .map_err(|err| anyhow::anyhow!("Redis does not answer: {err}"))
    }
}

impl RedisLua {
    /// Loads the ticket's sale, one load per ticket per server at a time.
    async fn load(&self, store: &SaleStore, ticket: TicketId) -> Result<(), PurchaseError> {
        let gate = {
            let mut map = self.loading.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(ticket).or_default().clone()
        };
        let _turn = gate.lock().await;
        // Whoever held the gate before us may have loaded it: ask Redis
        // (cheap) before asking PostgreSQL (one row lock per server).
        if store
            .redis_serving(ticket)
            .await
            .map_err(|e| self.failed(e))?
        {
            return Ok(());
        }
        let loaded = store
            .ensure_loaded(ticket)
            .await
            .map_err(|e| self.failed(e))?;
        if loaded.wrote_redis {
            self.ctx.metrics.event("sale_loaded");
        }
        Ok(())
    }

    fn failed(&self, err: StoreError) -> PurchaseError {
        failed(&self.ctx.metrics, err)
    }
}

/// Translates a store failure into the answer a buyer gets.
fn failed(metrics: &Metrics, err: StoreError) -> PurchaseError {
    match err {
        StoreError::RedisUnavailable(err) => {
            metrics.event("redis_unavailable");
            PurchaseError::Unavailable(
                anyhow::Error::new(err).context("Redis, which decides every sale"),
            )
        }
        StoreError::DatabaseUnavailable(err) => PurchaseError::Unavailable(
            anyhow::Error::new(err).context("PostgreSQL, to load the sale into Redis"),
        ),
        StoreError::NotFound => PurchaseError::NotFound,
        StoreError::Unexpected(err) => PurchaseError::Unexpected(err),
    }
}
