//! Webhook attempts locally: the outbox (one row per scheduled attempt,
//! with the time it is due, so the schedule survives restarts) and the
//! claims that guard every POST.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{SqliteStore, now_ms, parse_uuid};
use crate::domain::WebhookStatus;
use crate::ports::{PortResult, WebhookClaim, WebhookJob, WebhookScheduler};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_outbox (
    request_id TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    due_ms     INTEGER NOT NULL,
    -- Times the job was handed back (store errors, attempt not claimable yet).
    tries      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox(due_ms);
CREATE TABLE IF NOT EXISTS webhook_claims (
    request_id TEXT PRIMARY KEY,
    attempt    INTEGER NOT NULL,
    until_ms   INTEGER NOT NULL
) WITHOUT ROWID;
";

/// A due outbox row: the job, and how often it was handed back already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueWebhook {
    pub job: WebhookJob,
    pub tries: u32,
}

/// What a claim reads of the request.
struct OwedWebhook {
    terminal: bool,
    url: bool,
    status: Option<String>,
    attempts: u32,
}

impl SqliteStore {
    /// See [`JobStore::claim_webhook_attempt`](crate::ports::JobStore::claim_webhook_attempt).
    pub(super) async fn claim_webhook(
        &self,
        id: Uuid,
        attempt: u32,
        lease: Duration,
    ) -> PortResult<WebhookClaim> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let now = now_ms();
            let request = tx
                .query_row(
                    "SELECT terminal, webhook_url, webhook_status, webhook_attempts FROM requests WHERE id = ?1",
                    [id.to_string()],
                    |r| {
                        Ok(OwedWebhook {
                            terminal: r.get::<_, Option<String>>(0)?.is_some(),
                            url: r.get::<_, Option<String>>(1)?.is_some(),
                            status: r.get(2)?,
                            attempts: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            let Some(OwedWebhook { terminal, url, status, attempts }) = request else {
                return Ok(WebhookClaim::Done);
            };
            let pending = status
                .as_deref()
                .and_then(WebhookStatus::parse)
                .is_none_or(|s| s == WebhookStatus::Pending);
            if attempt == 0 || !terminal || !url || !pending || attempts >= attempt {
                return Ok(WebhookClaim::Done);
            }
            if attempts + 1 < attempt {
                return Ok(WebhookClaim::NotYet);
            }
            let held: Option<(u32, i64)> = tx
                .query_row(
                    "SELECT attempt, until_ms FROM webhook_claims WHERE request_id = ?1",
                    [id.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if matches!(held, Some((a, until)) if a >= attempt && until >= now) {
                return Ok(WebhookClaim::NotYet);
            }
            tx.execute(
                "INSERT INTO webhook_claims (request_id, attempt, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(request_id) DO UPDATE SET attempt = excluded.attempt, until_ms = excluded.until_ms",
                params![id.to_string(), attempt, now.saturating_add(lease.as_millis() as i64)],
            )?;
            tx.commit()?;
            Ok(WebhookClaim::Claimed)
        })
        .await
    }

    /// Moves requests that became terminal with a webhook into the outbox
    /// (their first attempt, due now) and clears their notification flag,
    /// in one transaction. Returns how many entered the outbox.
    pub async fn open_webhook_outbox(&self) -> PortResult<u64> {
        // Called on every pass of the notifier: the reader answers the
        // common "nothing new" without taking the writer.
        let owed = self
            .read(|conn| {
                conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM requests WHERE notify_due = 1)",
                    [],
                    |r| r.get::<_, bool>(0),
                )
            })
            .await?;
        if !owed {
            return Ok(0);
        }
        self.write(|conn| {
            let tx = conn.transaction()?;
            let now = now_ms();
            let added = tx.execute(
                "INSERT OR IGNORE INTO webhook_outbox (request_id, attempt, due_ms)
                 SELECT id, webhook_attempts + 1, ?1 FROM requests
                 WHERE notify_due = 1 AND terminal IS NOT NULL AND webhook_url IS NOT NULL
                   AND (webhook_status IS NULL OR webhook_status = 'pending')",
                [now],
            )?;
            tx.execute(
                "UPDATE requests SET notify_due = 0 WHERE notify_due = 1",
                [],
            )?;
            tx.commit()?;
            Ok(added as u64)
        })
        .await
    }

    /// Up to `limit` outbox rows due now, the longest waiting first.
    pub async fn due_webhooks(&self, limit: u32) -> PortResult<Vec<DueWebhook>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT request_id, attempt, due_ms, tries FROM webhook_outbox
                 WHERE due_ms <= ?1 ORDER BY due_ms LIMIT ?2",
            )?;
            stmt.query_map(params![now_ms(), limit], |r| {
                Ok(DueWebhook {
                    job: WebhookJob {
                        request_id: parse_uuid(&r.get::<_, String>(0)?)?,
                        attempt: r.get(1)?,
                        due_ms: r.get(2)?,
                    },
                    tries: r.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Scheduled attempts still in the outbox, due or not.
    pub async fn webhook_outbox_len(&self) -> PortResult<u64> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM webhook_outbox", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .await
        .map(|n| n as u64)
    }

    /// The job is done with: its row leaves the outbox.
    pub async fn finish_webhook_job(&self, job: &WebhookJob) -> PortResult<()> {
        let job = *job;
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM webhook_outbox WHERE request_id = ?1 AND attempt = ?2",
                params![job.request_id.to_string(), job.attempt],
            )?;
            Ok(())
        })
        .await
    }

    /// Hands the job back: due again after `delay`, one more try counted.
    pub async fn retry_webhook_job(&self, job: &WebhookJob, delay: Duration) -> PortResult<()> {
        let job = *job;
        self.write(move |conn| {
            conn.execute(
                "UPDATE webhook_outbox SET due_ms = ?3, tries = tries + 1
                 WHERE request_id = ?1 AND attempt = ?2",
                params![
                    job.request_id.to_string(),
                    job.attempt,
                    now_ms().saturating_add(delay.as_millis() as i64)
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// After a restart: the claims of the dead process end now (it was
    /// the only one delivering), so its interrupted attempts run again.
    pub async fn release_webhook_claims(&self) -> PortResult<()> {
        self.write(|conn| {
            conn.execute("DELETE FROM webhook_claims", [])?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl WebhookScheduler for SqliteStore {
    async fn schedule(&self, job: &WebhookJob) -> PortResult<()> {
        let job = *job;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO webhook_outbox (request_id, attempt, due_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(request_id, attempt) DO UPDATE SET due_ms = excluded.due_ms",
                params![job.request_id.to_string(), job.attempt, job.due_ms],
            )?;
            Ok(())
        })
        .await
    }
}
