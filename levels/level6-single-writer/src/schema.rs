//! Level 6's tables (`schema.sql`), and the settings every server of one
//! database must agree on.

use anyhow::Context as _;
use sqlx::PgPool;

/// An arbitrary constant: the advisory lock the schema is created under.
const SCHEMA_LOCK: i64 = 0x6c65_7665_6c36; // "level6"

/// Creates Level 6's tables if they are missing (idempotent, safe when two
/// servers start at once), and checks that this server's partition count is
/// the one the database's first server chose.
pub async fn prepare(pool: &PgPool, partitions: u32) -> anyhow::Result<()> {
    let mut tx = pool.begin().await.context("begin Level 6's schema")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    // A plain string runs as one simple query, all statements at once.
    sqlx::Executor::execute(&mut *tx, include_str!("schema.sql"))
        .await
        .context("create Level 6's tables")?;
    let wanted = i32::try_from(partitions).context("too many partitions")?;
    sqlx::query("INSERT INTO level6_settings (partitions) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(wanted)
        .execute(&mut *tx)
        .await?;
    let chosen: i32 = sqlx::query_scalar("SELECT partitions FROM level6_settings")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    anyhow::ensure!(
        chosen == wanted,
        "this database's Level 6 servers split tickets over {chosen} partitions, and this one \
         was started with --partitions {wanted}: two partition counts would give one ticket two \
         deciders. Start it with --partitions {chosen}."
    );
    Ok(())
}

/// The prefix of this database's keys in Redis: Level 4's namespace, drawn
/// once per database (migration 0003), so that tests sharing one Redis
/// never see each other's streams.
pub async fn namespace(pool: &PgPool) -> anyhow::Result<String> {
    sqlx::query_scalar("SELECT namespace FROM level4_namespace")
        .fetch_one(pool)
        .await
        .context("read the database's Redis namespace")
}
