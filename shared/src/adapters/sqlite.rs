//! The embedded store: requests, products, images, the job queue and the
//! notification outbox in one SQLite database (WAL), so that every
//! transition is one transaction and a `kill -9` loses nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::domain::{
    ErrorCode, ImageError, ImageJob, ImageKey, ImageOutcome, ImageRecord, ImageStatus, NewRequest,
    ProductRecord, Progress, RequestRecord, RequestStatus, WebhookState, WebhookStatus,
};
use crate::ports::{
    CreateOutcome, Delivery, FanOutClaim, FanOutSlice, Finished, JobQueue, JobSource, JobStore,
    PortError, PortResult, WebhookClaim,
};

mod webhooks;
pub use webhooks::DueWebhook;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id               TEXT PRIMARY KEY,
    terminal         TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    completed_at     TEXT,
    total            INTEGER NOT NULL,
    succeeded        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    product_count    INTEGER NOT NULL,
    webhook_url      TEXT,
    webhook_status   TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    warnings         TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    client_id        TEXT,
    -- The outbox: set by the terminal transition, cleared once notified.
    notify_due       INTEGER NOT NULL DEFAULT 0,
    -- The fan-out: images queued, the next product to queue, and its lease.
    queued           INTEGER NOT NULL DEFAULT 0,
    fo_next          INTEGER NOT NULL DEFAULT 0,
    fo_owner         TEXT,
    fo_lease         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_notify_due ON requests(notify_due) WHERE notify_due = 1;
CREATE TABLE IF NOT EXISTS products (
    request_id    TEXT NOT NULL,
    position      INTEGER NOT NULL,
    serial_number INTEGER NOT NULL,
    product_name  TEXT NOT NULL,
    first_ordinal INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_id, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    request_id    TEXT NOT NULL,
    position      INTEGER NOT NULL,
    idx           INTEGER NOT NULL,
    input_url     TEXT NOT NULL,
    status        TEXT NOT NULL,
    output_key    TEXT,
    input_bytes   INTEGER,
    output_bytes  INTEGER,
    width         INTEGER,
    height        INTEGER,
    original_kept INTEGER NOT NULL DEFAULT 0,
    error_code    TEXT,
    error_message TEXT,
    PRIMARY KEY (request_id, position, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id    TEXT NOT NULL,
    position      INTEGER NOT NULL,
    idx           INTEGER NOT NULL,
    body          TEXT NOT NULL,
    visible_at    INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (request_id, position, idx)
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue(visible_at, id);
";

/// Columns added since the first schema, added to databases made before
/// them. Requests stored before the fan-out existed queued every image at
/// once (see `migrate`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("requests", "queued", "INTEGER NOT NULL DEFAULT 0"),
    ("requests", "fo_next", "INTEGER NOT NULL DEFAULT 0"),
    ("requests", "fo_owner", "TEXT"),
    ("requests", "fo_lease", "INTEGER NOT NULL DEFAULT 0"),
    ("products", "first_ordinal", "INTEGER NOT NULL DEFAULT 0"),
    ("requests", "client_id", "TEXT"),
];

/// Products a fan-out slice covers at most, and images (a product with
/// more stays whole).
const SLICE_PRODUCTS: i64 = 500;
const SLICE_IMAGES: u32 = 500;

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut added_fan_out = false;
    for (table, column, decl) in ADDED_COLUMNS {
        let exists: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1)"),
            [column],
            |r| r.get(0),
        )?;
        if !exists {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
            added_fan_out |= *column == "fo_next";
        }
    }
    if added_fan_out {
        // Before the fan-out, a request's jobs were all queued when it was stored.
        tx.execute_batch("UPDATE requests SET queued = total, fo_next = product_count")?;
    }
    tx.commit()
}

/// The SQLite database behind the local runner. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// All writes go through one connection: SQLite has one writer anyway.
    writer: Mutex<Connection>,
    /// Reads use their own connection so that status calls never queue
    /// behind writes (WAL lets them run side by side).
    reader: Mutex<Connection>,
}

fn db_err(e: rusqlite::Error) -> PortError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            PortError::Transient(format!("database busy: {e}"))
        }
        other => PortError::Permanent(format!("database: {other}")),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // WAL + NORMAL survives a killed process; only an OS crash could lose
    // the last transactions, which the queue then redelivers.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl SqliteStore {
    pub fn open(path: &Path) -> PortResult<Self> {
        let mut writer = open(path).map_err(db_err)?;
        writer.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&mut writer).map_err(db_err)?;
        writer.execute_batch(webhooks::SCHEMA).map_err(db_err)?;
        let reader = open(path).map_err(db_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
            }),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> PortResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn).map_err(db_err)
        })
        .await
        .map_err(|e| PortError::Permanent(format!("database task: {e}")))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> PortResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(db_err)
        })
        .await
        .map_err(|e| PortError::Permanent(format!("database task: {e}")))?
    }

    /// After a restart: every lease of the dead process ends now, and any
    /// pending image whose job never reached the queue is queued again.
    pub async fn recover(&self) -> PortResult<u64> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            tx.execute("UPDATE queue SET visible_at = 0", [])?;
            let requeued = {
                let mut select = tx.prepare(
                    "SELECT i.request_id, i.position, p.serial_number, i.idx, i.input_url,
                            p.first_ordinal + i.idx - 1, r.total
                     FROM images i JOIN products p ON p.request_id = i.request_id AND p.position = i.position
                     JOIN requests r ON r.id = i.request_id
                     WHERE i.status = 'pending' AND i.position < r.fo_next
                       AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.request_id = i.request_id
                                       AND q.position = i.position AND q.idx = i.idx)",
                )?;
                let jobs = select
                    .query_map([], |r| {
                        Ok(ImageJob {
                            request_id: parse_uuid(&r.get::<_, String>(0)?)?,
                            product: r.get(1)?,
                            serial_number: r.get::<_, i64>(2)? as u64,
                            image: r.get(3)?,
                            input_url: r.get(4)?,
                            ordinal: r.get(5)?,
                            total: r.get(6)?,
                            host_wait: None,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                enqueue(&tx, &jobs)?
            };
            tx.commit()?;
            Ok(requeued)
        })
        .await
    }

    /// Requests whose counters are complete but that never made their
    /// terminal transition (a crash between the two steps).
    pub async fn unfinished_complete_requests(&self) -> PortResult<Vec<(Uuid, Progress)>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, total, succeeded, failed FROM requests
                 WHERE terminal IS NULL AND succeeded + failed >= total",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    parse_uuid(&r.get::<_, String>(0)?)?,
                    Progress {
                        total: r.get(1)?,
                        succeeded: r.get(2)?,
                        failed: r.get(3)?,
                    },
                ))
            })?
            .collect()
        })
        .await
    }

    /// Requests whose fan-out has not queued every image yet.
    pub async fn unfinished_fan_outs(&self) -> PortResult<Vec<Uuid>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id FROM requests WHERE fo_next < product_count ORDER BY created_at",
            )?;
            stmt.query_map([], |r| parse_uuid(&r.get::<_, String>(0)?))?
                .collect()
        })
        .await
    }

    /// Jobs waiting in the queue, visible or leased.
    pub async fn queue_depth(&self) -> PortResult<u64> {
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n as u64)
    }
}

fn parse_uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn enqueue(tx: &rusqlite::Transaction<'_>, jobs: &[ImageJob]) -> rusqlite::Result<u64> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO queue (request_id, position, idx, body, visible_at) VALUES (?1, ?2, ?3, ?4, 0)",
    )?;
    let mut added = 0;
    for job in jobs {
        let body = serde_json::to_string(job)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        added += insert.execute(params![
            job.request_id.to_string(),
            job.product,
            job.image,
            body
        ])? as u64;
    }
    Ok(added)
}

const REQUEST_COLUMNS: &str =
    "id, terminal, created_at, updated_at, completed_at, total, succeeded, failed,
    product_count, webhook_url, webhook_status, webhook_attempts, warnings, fingerprint, queued,
    client_id";

fn request_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRecord> {
    let webhook = match r.get::<_, Option<String>>(9)? {
        Some(url) => Some(WebhookState {
            url,
            status: r
                .get::<_, Option<String>>(10)?
                .as_deref()
                .and_then(WebhookStatus::parse)
                .unwrap_or(WebhookStatus::Pending),
            attempts: r.get(11)?,
        }),
        None => None,
    };
    let warnings: String = r.get(12)?;
    Ok(RequestRecord {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        terminal: r
            .get::<_, Option<String>>(1)?
            .as_deref()
            .and_then(RequestStatus::parse),
        created_at: parse_ts(&r.get::<_, String>(2)?)?,
        updated_at: parse_ts(&r.get::<_, String>(3)?)?,
        completed_at: r
            .get::<_, Option<String>>(4)?
            .as_deref()
            .map(parse_ts)
            .transpose()?,
        progress: Progress {
            total: r.get(5)?,
            succeeded: r.get(6)?,
            failed: r.get(7)?,
        },
        queued: r.get(14)?,
        product_count: r.get(8)?,
        webhook,
        warnings: serde_json::from_str(&warnings).unwrap_or_default(),
        fingerprint: r.get(13)?,
        client_id: r.get(15)?,
    })
}

fn get_request(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<RequestRecord>> {
    conn.query_row(
        &format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"),
        [id.to_string()],
        request_from_row,
    )
    .optional()
}

fn image_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    let status_raw: String = r.get(2)?;
    let error = match (
        r.get::<_, Option<String>>(9)?,
        r.get::<_, Option<String>>(10)?,
    ) {
        (Some(code), message) => ErrorCode::parse(&code).map(|code| ImageError {
            code,
            message: message.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(ImageRecord {
        index: r.get(0)?,
        input_url: r.get(1)?,
        status: ImageStatus::parse(&status_raw).unwrap_or(ImageStatus::Pending),
        output_key: r.get(3)?,
        input_bytes: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        output_bytes: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        width: r.get(6)?,
        height: r.get(7)?,
        original_kept: r.get(8)?,
        error,
    })
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_request(&self, new: &NewRequest) -> PortResult<CreateOutcome> {
        let new = new.clone();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let now = ts(new.created_at);
            let inserted = tx.execute(
                "INSERT INTO requests (id, created_at, updated_at, total, product_count, webhook_url,
                                       webhook_status, warnings, fingerprint, client_id)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(id) DO NOTHING",
                params![
                    new.id.to_string(),
                    now,
                    new.image_count(),
                    new.products.len() as u32,
                    new.webhook_url,
                    new.webhook_url.as_ref().map(|_| WebhookStatus::Pending.as_str()),
                    serde_json::to_string(&new.warnings).unwrap_or_else(|_| "[]".into()),
                    new.fingerprint,
                    new.client_id,
                ],
            )?;
            if inserted == 0 {
                let existing = get_request(&tx, new.id)?;
                return Ok(match existing {
                    Some(r) => CreateOutcome::Existing(r),
                    None => CreateOutcome::Created,
                });
            }
            {
                let id = new.id.to_string();
                let mut product = tx.prepare_cached(
                    "INSERT INTO products (request_id, position, serial_number, product_name, first_ordinal)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut image = tx.prepare_cached(
                    "INSERT INTO images (request_id, position, idx, input_url, status) VALUES (?1, ?2, ?3, ?4, 'pending')",
                )?;
                let mut ordinal = 0u32;
                for (position, p) in new.products.iter().enumerate() {
                    product.execute(params![id, position as u32, p.serial_number as i64, p.product_name, ordinal])?;
                    ordinal += p.urls.len() as u32;
                    for (i, url) in p.urls.iter().enumerate() {
                        image.execute(params![id, position as u32, i as u32 + 1, url])?;
                    }
                }
            }
            tx.commit()?;
            Ok(CreateOutcome::Created)
        })
        .await
    }

    async fn get_request(&self, id: Uuid) -> PortResult<Option<RequestRecord>> {
        self.read(move |conn| get_request(conn, id)).await
    }

    async fn list_products(
        &self,
        id: Uuid,
        after: Option<u32>,
        limit: u32,
    ) -> PortResult<Vec<ProductRecord>> {
        self.read(move |conn| {
            let start = after.map_or(0, |a| i64::from(a) + 1);
            let mut products = conn.prepare_cached(
                "SELECT position, serial_number, product_name FROM products
                 WHERE request_id = ?1 AND position >= ?2 ORDER BY position LIMIT ?3",
            )?;
            let mut list: Vec<ProductRecord> = products
                .query_map(params![id.to_string(), start, limit], |r| {
                    Ok(ProductRecord {
                        position: r.get(0)?,
                        serial_number: r.get::<_, i64>(1)? as u64,
                        product_name: r.get(2)?,
                        images: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let (Some(first), Some(last)) = (list.first().map(|p| p.position), list.last().map(|p| p.position))
            else {
                return Ok(list);
            };
            let mut images = conn.prepare_cached(
                "SELECT idx, input_url, status, output_key, input_bytes, output_bytes, width, height,
                        original_kept, error_code, error_message, position
                 FROM images WHERE request_id = ?1 AND position BETWEEN ?2 AND ?3 ORDER BY position, idx",
            )?;
            let mut rows = images.query(params![id.to_string(), first, last])?;
            let mut cursor = 0;
            while let Some(row) = rows.next()? {
                let position: u32 = row.get(11)?;
                while cursor < list.len() && list[cursor].position < position {
                    cursor += 1;
                }
                if let Some(p) = list.get_mut(cursor).filter(|p| p.position == position) {
                    p.images.push(image_from_row(row)?);
                }
            }
            Ok(list)
        })
        .await
    }

    async fn image_status(&self, key: ImageKey) -> PortResult<Option<ImageStatus>> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT status FROM images WHERE request_id = ?1 AND position = ?2 AND idx = ?3",
                params![key.request_id.to_string(), key.product, key.image],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|s| s.as_deref().and_then(ImageStatus::parse))
        })
        .await
    }

    async fn finish_image(&self, key: ImageKey, outcome: &ImageOutcome) -> PortResult<Finished> {
        let outcome = outcome.clone();
        let result = self
            .write(move |conn| {
                let tx = conn.transaction()?;
                let id = key.request_id.to_string();
                let changed = match &outcome {
                    ImageOutcome::Succeeded(c) => tx.execute(
                        "UPDATE images SET status = 'succeeded', output_key = ?4, input_bytes = ?5, output_bytes = ?6,
                                width = ?7, height = ?8, original_kept = ?9
                         WHERE request_id = ?1 AND position = ?2 AND idx = ?3 AND status = 'pending'",
                        params![
                            id,
                            key.product,
                            key.image,
                            c.output_key,
                            c.input_bytes as i64,
                            c.output_bytes as i64,
                            c.width,
                            c.height,
                            c.original_kept
                        ],
                    )?,
                    ImageOutcome::Failed { error, input_bytes } => tx.execute(
                        "UPDATE images SET status = 'failed', error_code = ?4, error_message = ?5, input_bytes = ?6
                         WHERE request_id = ?1 AND position = ?2 AND idx = ?3 AND status = 'pending'",
                        params![
                            id,
                            key.product,
                            key.image,
                            error.code.as_str(),
                            error.message,
                            input_bytes.map(|b| b as i64)
                        ],
                    )?,
                };
                if changed == 1 {
                    let (s, f) = match outcome.status() {
                        ImageStatus::Succeeded => (1, 0),
                        _ => (0, 1),
                    };
                    tx.execute(
                        "UPDATE requests SET succeeded = succeeded + ?2, failed = failed + ?3, updated_at = ?4 WHERE id = ?1",
                        params![id, s, f, ts(Utc::now())],
                    )?;
                }
                let progress = tx
                    .query_row("SELECT total, succeeded, failed FROM requests WHERE id = ?1", [&id], |r| {
                        Ok(Progress { total: r.get(0)?, succeeded: r.get(1)?, failed: r.get(2)? })
                    })
                    .optional()?;
                // A changed row proves the image exists; only a no-op needs the look-up.
                let exists: bool = changed == 1
                    || tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM images WHERE request_id = ?1 AND position = ?2 AND idx = ?3)",
                        params![id, key.product, key.image],
                        |r| r.get(0),
                    )?;
                tx.commit()?;
                Ok(progress.filter(|_| exists).map(|progress| Finished {
                    applied: changed == 1,
                    all_done: progress.is_done().then_some(progress),
                }))
            })
            .await?;
        result.ok_or_else(|| {
            PortError::Permanent(format!(
                "no image {}/{}/{}",
                key.request_id, key.product, key.image
            ))
        })
    }

    async fn complete_request(&self, id: Uuid, progress: Progress) -> PortResult<bool> {
        if !progress.is_done() {
            return Ok(false);
        }
        let status = RequestStatus::from_progress(&progress);
        self.write(move |conn| {
            let now = ts(Utc::now());
            let changed = conn.execute(
                "UPDATE requests SET terminal = ?2, completed_at = ?3, updated_at = ?3, notify_due = 1
                 WHERE id = ?1 AND terminal IS NULL AND total = ?4 AND succeeded = ?5 AND failed = ?6",
                params![id.to_string(), status.as_str(), now, progress.total, progress.succeeded, progress.failed],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn record_webhook(&self, id: Uuid, state: &WebhookState) -> PortResult<()> {
        let state = state.clone();
        self.write(move |conn| {
            conn.execute(
                "UPDATE requests SET webhook_status = ?2, webhook_attempts = ?3, updated_at = ?4 WHERE id = ?1",
                params![id.to_string(), state.status.as_str(), state.attempts, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    async fn claim_fan_out(
        &self,
        id: Uuid,
        owner: Uuid,
        lease: Duration,
    ) -> PortResult<FanOutClaim> {
        self.write(move |conn| {
            let now = now_ms();
            let tx = conn.transaction()?;
            let row = tx
                .query_row(
                    "SELECT fo_next, product_count, queued, fo_owner, fo_lease FROM requests WHERE id = ?1",
                    [id.to_string()],
                    |r| {
                        Ok((
                            r.get::<_, u32>(0)?,
                            r.get::<_, u32>(1)?,
                            r.get::<_, u32>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()?;
            let Some((next, products, queued, holder, until)) = row else {
                return Ok(FanOutClaim::Missing);
            };
            if next >= products {
                return Ok(FanOutClaim::Finished);
            }
            if until > now && holder.as_deref() != Some(owner.to_string().as_str()) {
                return Ok(FanOutClaim::Busy {
                    retry_after: Duration::from_millis((until - now) as u64),
                });
            }
            tx.execute(
                "UPDATE requests SET fo_owner = ?2, fo_lease = ?3 WHERE id = ?1",
                params![id.to_string(), owner.to_string(), now + lease.as_millis() as i64],
            )?;
            tx.commit()?;
            Ok(FanOutClaim::Claimed { next, queued })
        })
        .await
    }

    async fn fan_out_slice(&self, id: Uuid, from: u32) -> PortResult<Option<FanOutSlice>> {
        self.read(move |conn| {
            let Some(total) = conn
                .query_row("SELECT total FROM requests WHERE id = ?1", [id.to_string()], |r| {
                    r.get::<_, u32>(0)
                })
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = conn.prepare_cached(
                "SELECT p.position, p.serial_number, p.first_ordinal, i.idx, i.input_url
                 FROM products p JOIN images i ON i.request_id = p.request_id AND i.position = p.position
                 WHERE p.request_id = ?1 AND p.position >= ?2 AND p.position < ?2 + ?3
                 ORDER BY p.position, i.idx",
            )?;
            let mut rows = stmt.query(params![id.to_string(), from, SLICE_PRODUCTS])?;
            let mut jobs: Vec<ImageJob> = Vec::new();
            let mut next = None;
            while let Some(r) = rows.next()? {
                let position: u32 = r.get(0)?;
                let image: u32 = r.get(3)?;
                // Close the slice at a product boundary once it is full.
                if image == 1 && jobs.len() as u32 >= SLICE_IMAGES {
                    next = Some(position);
                    break;
                }
                jobs.push(ImageJob {
                    request_id: id,
                    product: position,
                    serial_number: r.get::<_, i64>(1)? as u64,
                    image,
                    input_url: r.get(4)?,
                    ordinal: r.get::<_, u32>(2)? + image - 1,
                    total,
                    host_wait: None,
                });
            }
            let Some(last) = jobs.last().map(|j| j.product) else {
                return Ok(None);
            };
            Ok(Some(FanOutSlice {
                next: next.unwrap_or(last + 1),
                jobs,
            }))
        })
        .await
    }

    async fn advance_fan_out(
        &self,
        id: Uuid,
        owner: Uuid,
        from: u32,
        next: u32,
        jobs: u32,
        lease: Duration,
    ) -> PortResult<bool> {
        self.write(move |conn| {
            let now = now_ms();
            let changed = conn.execute(
                "UPDATE requests SET fo_next = ?4, fo_lease = ?5, queued = queued + ?6, updated_at = ?7
                 WHERE id = ?1 AND fo_owner = ?2 AND fo_next = ?3",
                params![
                    id.to_string(),
                    owner.to_string(),
                    from,
                    next,
                    now + lease.as_millis() as i64,
                    jobs,
                    ts(Utc::now())
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn claim_webhook_attempt(
        &self,
        id: Uuid,
        attempt: u32,
        lease: Duration,
    ) -> PortResult<WebhookClaim> {
        self.claim_webhook(id, attempt, lease).await
    }
}

fn parse_receipt(receipt: &str) -> PortResult<(i64, u32)> {
    receipt
        .split_once(':')
        .and_then(|(id, count)| Some((id.parse().ok()?, count.parse().ok()?)))
        .ok_or_else(|| PortError::Permanent(format!("not a receipt: {receipt:?}")))
}

#[async_trait]
impl JobQueue for SqliteStore {
    async fn send(&self, jobs: &[ImageJob]) -> PortResult<()> {
        let jobs = jobs.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction()?;
            enqueue(&tx, &jobs)?;
            tx.commit()
        })
        .await
    }

    /// Replaces the image's row in place: its receive count starts over, so
    /// the acknowledgement of the delivery being handled (whose receipt
    /// names the old count) leaves the new one alone.
    async fn send_later(&self, job: &ImageJob, delay: Duration) -> PortResult<()> {
        let body = serde_json::to_string(job)
            .map_err(|e| PortError::Permanent(format!("encoding a job: {e}")))?;
        let (request_id, product, image) = (job.request_id.to_string(), job.product, job.image);
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO queue (request_id, position, idx, body, visible_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (request_id, position, idx)
                 DO UPDATE SET body = excluded.body, visible_at = excluded.visible_at, receive_count = 0",
                params![request_id, product, image, body, now_ms() + delay.as_millis() as i64],
            )?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl JobSource for SqliteStore {
    async fn receive(&self, max: usize, lease: Duration) -> PortResult<Vec<Delivery>> {
        self.write(move |conn| {
            let now = now_ms();
            let tx = conn.transaction()?;
            let rows: Vec<(i64, String, u32)> = {
                let mut select = tx.prepare_cached(
                    "SELECT id, body, receive_count FROM queue WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2",
                )?;
                select
                    .query_map(params![now, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut deliveries = Vec::with_capacity(rows.len());
            {
                let mut lease_stmt = tx.prepare_cached(
                    "UPDATE queue SET visible_at = ?2, receive_count = receive_count + 1 WHERE id = ?1",
                )?;
                for (id, body, count) in rows {
                    lease_stmt.execute(params![id, now + lease.as_millis() as i64])?;
                    match serde_json::from_str::<ImageJob>(&body) {
                        Ok(job) => deliveries.push(Delivery {
                            job,
                            receipt: format!("{id}:{}", count + 1),
                            receive_count: count + 1,
                        }),
                        // Only this process writes bodies; one that does not
                        // parse can never succeed, so it is dropped.
                        Err(_) => {
                            tx.execute("DELETE FROM queue WHERE id = ?1", [id])?;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(deliveries)
        })
        .await
    }

    async fn ack(&self, receipt: &str) -> PortResult<()> {
        let (id, count) = parse_receipt(receipt)?;
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM queue WHERE id = ?1 AND receive_count = ?2",
                params![id, count],
            )?;
            Ok(())
        })
        .await
    }

    async fn retry_later(&self, receipt: &str, delay: Duration) -> PortResult<()> {
        let (id, count) = parse_receipt(receipt)?;
        self.write(move |conn| {
            conn.execute(
                "UPDATE queue SET visible_at = ?3 WHERE id = ?1 AND receive_count = ?2",
                params![id, count, now_ms() + delay.as_millis() as i64],
            )?;
            Ok(())
        })
        .await
    }
}
