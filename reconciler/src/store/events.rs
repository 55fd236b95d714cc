//! The queue of forge events: webhook deliveries stored once per delivery id by the HTTP
//! server and taken, oldest first, by the service's loop.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

use super::{Cells, Result, Store, StoreError, millis, to_json};

/// One recorded delivery, as the queue's history shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeEventRow {
    /// The delivery id (`X-GitHub-Delivery`).
    pub delivery: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// When the loop finished it, or when it was refused; `None` while queued.
    pub finished_at: Option<DateTime<Utc>>,
    /// What became of it: `handled`, why it was dropped, or why it was refused.
    pub outcome: Option<String>,
}

/// Longest delivery id kept; GitHub's are UUIDs.
const MAX_DELIVERY_LEN: usize = 200;

impl Store {
    /// Queues `event` under its delivery id. Returns false, storing nothing, when that
    /// delivery was recorded before (a redelivery or a replay).
    pub async fn record_forge_event<E: Serialize>(
        &self,
        delivery: &str,
        event: &E,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.insert_forge_event(delivery, event, None, now).await
    }

    /// Records `event` as already finished with `outcome` (why it was refused), so that it
    /// shows in the queue's history but is never handed out. False when that delivery was
    /// recorded before.
    pub async fn record_refused_forge_event<E: Serialize>(
        &self,
        delivery: &str,
        event: &E,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.insert_forge_event(delivery, event, Some(outcome), now)
            .await
    }

    /// Inserts a delivery: queued when `refused` is `None`, else finished with that outcome.
    async fn insert_forge_event<E: Serialize>(
        &self,
        delivery: &str,
        event: &E,
        refused: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        if delivery.is_empty() || delivery.len() > MAX_DELIVERY_LEN {
            return Err(StoreError::Invalid(format!(
                "a delivery id must have 1 to {MAX_DELIVERY_LEN} bytes, not {}",
                delivery.len()
            )));
        }
        let json = to_json("a forge event", event)?;
        // One statement, so that concurrent recorders of one delivery race on the unique
        // index and exactly one of them inserts.
        let inserted = sqlx::query(
            "INSERT INTO forge_events (delivery, event, received_at, finished_at, outcome)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (delivery) DO NOTHING RETURNING id",
        )
        .bind(delivery)
        .bind(json)
        .bind(millis(now))
        .bind(refused.map(|_| millis(now)))
        .bind(refused)
        .fetch_optional(&self.pool)
        .await?;
        Ok(inserted.is_some())
    }

    /// Unfinished events, oldest first, at most `limit`, with their queue ids. Each is read
    /// on its own: one that cannot be read as an `E` is that error, beside its id.
    pub async fn pending_forge_events<E: DeserializeOwned>(
        &self,
        limit: u32,
    ) -> Result<Vec<(i64, Result<E>)>> {
        let rows = sqlx::query(
            "SELECT id, event FROM forge_events WHERE finished_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                Ok((id, Cells::new(row, "forge_events", id).json("event")))
            })
            .collect()
    }

    /// The newest `limit` deliveries, newest first, whatever became of them.
    pub async fn forge_event_history(&self, limit: u32) -> Result<Vec<Result<ForgeEventRow>>> {
        let rows = sqlx::query(
            "SELECT id, delivery, received_at, finished_at, outcome FROM forge_events
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let cells = Cells::new(row, "forge_events", id);
                Ok((|| {
                    Ok(ForgeEventRow {
                        delivery: cells.get("delivery")?,
                        received_at: cells.time("received_at")?,
                        finished_at: cells.opt_time("finished_at")?,
                        outcome: cells.get("outcome")?,
                    })
                })())
            })
            .collect()
    }

    /// Marks an event handled, with what became of it (`handled`, or why it was dropped),
    /// so that it is not handed out again. Finishing it twice keeps the first time.
    pub async fn finish_forge_event(
        &self,
        id: i64,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE forge_events SET finished_at = $2, outcome = $3
             WHERE id = $1 AND finished_at IS NULL",
        )
        .bind(id)
        .bind(millis(now))
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM forge_events WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    what: "forge event",
                    key: id.to_string(),
                });
            }
        }
        Ok(())
    }
}
