//! The job store on DynamoDB (with the request's rows on S3).
//!
//! | item                | `pk`                 | `sk`            | written            |
//! |---------------------|----------------------|-----------------|--------------------|
//! | request             | `REQ#{id}`           | `A`             | ~ once per fan-out slice, completion, webhook |
//! | shard done          | `REQ#{id}`           | `D#{shard:05}`  | once               |
//! | shard counter       | `REQ#{id}#S{shard:05}` | `C`           | once per image of the shard |
//! | image result        | `REQ#{id}#S{shard:05}` | `I#{offset:04}` | once               |
//! | download slot       | `HOST#{origin hash}` | `SLOT#{k:04}`   | twice per download (`host_slots`) |
//!
//! Submitting writes the validated rows to S3 as one document
//! ([`crate::domain::rows`]) and ONE request item, whatever the size of the
//! request. The fan-out queues jobs slice by slice, keeping its cursor and
//! lease on the request item. No item is hot: an image's result is a
//! conditional put of its own item, and it is counted by adding its offset
//! to its shard's counter item (a number set, so adding twice counts once);
//! the image's shard sits under its own partition key, so a request's
//! writes spread over many partitions. The image that fills a shard writes
//! the shard's done item under the request, and the one that sees every
//! shard done reports the request as finished. Per image that is two
//! one-unit writes and no read on the first delivery. Every item carries
//! `expires_at` (epoch seconds) for DynamoDB's TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnValue, ReturnValuesOnConditionCheckFailure,
};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, TryStreamExt};
use uuid::Uuid;

use super::aws_error::{has_code, port_error};
use super::s3::RowsBucket;
use crate::domain::rows::{self, Row, Segment};
use crate::domain::{
    ErrorCode, ImageError, ImageKey, ImageOutcome, ImageRecord, ImageStatus, NewRequest,
    ProductRecord, Progress, RequestRecord, RequestStatus, Shards, WebhookState, WebhookStatus,
};
use crate::ports::{
    CreateOutcome, FanOutClaim, FanOutSlice, Finished, JobStore, PortError, PortResult,
    WebhookClaim,
};

mod host_slots;
mod webhooks;

/// The TTL of a store built without a configuration (`Config::record_ttl`).
pub const DEFAULT_TTL: Duration =
    Duration::from_secs(crate::config::DEFAULT_RECORD_TTL_DAYS * 24 * 3600);

/// Reads of several shards' items at once.
const READS_IN_FLIGHT: usize = 8;
/// `BatchGetItem` takes at most 100 keys.
const BATCH_GET: usize = 100;

type Item = HashMap<String, AttributeValue>;

/// Writes per item, counted by the adapter itself when asked to (tests and
/// benchmarks hold a request's writes to the "no hot item" budget).
#[derive(Clone, Debug, Default)]
pub struct WriteLog(Arc<Mutex<HashMap<(String, String), u32>>>);

impl WriteLog {
    fn note(&self, item: &Item) {
        let pk = get_s(item, "pk").unwrap_or_default().to_owned();
        let sk = get_s(item, "sk").unwrap_or_default().to_owned();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((pk, sk)).or_default() += 1;
    }

    /// Every item written, with its count of write calls.
    pub fn counts(&self) -> HashMap<(String, String), u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    rows: RowsBucket,
    ttl: Duration,
    writes: Option<WriteLog>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn pk(id: Uuid) -> String {
    format!("REQ#{id}")
}

fn shard_pk(id: Uuid, shard: u32) -> String {
    format!("REQ#{id}#S{shard:05}")
}

fn done_sk(shard: u32) -> String {
    format!("D#{shard:05}")
}

fn image_sk(offset: u32) -> String {
    format!("I#{offset:04}")
}

fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn request_key(id: Uuid) -> Item {
    key(pk(id), "A")
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn get_ts(item: &Item, name: &str) -> Option<DateTime<Utc>> {
    get_s(item, name)
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Members of a number set attribute (absent: none).
fn set_len(item: &Item, name: &str) -> u32 {
    item.get(name)
        .and_then(|v| v.as_ns().ok())
        .map_or(0, |v| v.len() as u32)
}

fn corrupt(what: &str, item: &Item) -> PortError {
    let sk = get_s(item, "sk").unwrap_or("?");
    PortError::Permanent(format!("stored {what} item {sk} is missing a field"))
}

fn now_secs() -> i64 {
    Utc::now().timestamp()
}

/// What the request item says about where its rows are.
struct Layout {
    total: u32,
    product_count: u32,
    rows_key: String,
    rows_len: u64,
    index: Vec<Segment>,
}

impl Layout {
    fn of(item: &Item) -> PortResult<Self> {
        let bad = || corrupt("request", item);
        Ok(Self {
            total: get_n(item, "total").ok_or_else(bad)?,
            product_count: get_n(item, "product_count").ok_or_else(bad)?,
            rows_key: get_s(item, "rows_key").ok_or_else(bad)?.to_owned(),
            rows_len: get_n(item, "rows_len").ok_or_else(bad)?,
            index: get_s(item, "rows_index")
                .and_then(rows::decode_index)
                .ok_or_else(bad)?,
        })
    }
}

fn request_from_item(item: &Item, progress: Progress) -> PortResult<RequestRecord> {
    let bad = || corrupt("request", item);
    let id = get_s(item, "pk")
        .and_then(|p| p.strip_prefix("REQ#"))
        .and_then(|p| Uuid::parse_str(p).ok())
        .ok_or_else(bad)?;
    let webhook = get_s(item, "webhook_url").map(|url| WebhookState {
        url: url.to_owned(),
        status: get_s(item, "webhook_status")
            .and_then(WebhookStatus::parse)
            .unwrap_or(WebhookStatus::Pending),
        attempts: get_n(item, "webhook_attempts").unwrap_or(0),
    });
    let warnings = match item.get("warnings") {
        Some(AttributeValue::L(list)) => {
            list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
        }
        _ => Vec::new(),
    };
    Ok(RequestRecord {
        id,
        terminal: get_s(item, "terminal").and_then(RequestStatus::parse),
        created_at: get_ts(item, "created_at").ok_or_else(bad)?,
        updated_at: get_ts(item, "updated_at").ok_or_else(bad)?,
        completed_at: get_ts(item, "completed_at"),
        progress,
        queued: get_n(item, "queued").unwrap_or(0),
        product_count: get_n(item, "product_count").ok_or_else(bad)?,
        webhook,
        warnings,
        fingerprint: get_s(item, "fingerprint").unwrap_or_default().to_owned(),
        client_id: get_s(item, "client_id").map(str::to_owned),
    })
}

fn image_from_item(item: &Item, index: u32, input_url: String) -> PortResult<ImageRecord> {
    let bad = || corrupt("image", item);
    let error = get_s(item, "error_code")
        .and_then(ErrorCode::parse)
        .map(|code| ImageError {
            code,
            message: get_s(item, "error_message").unwrap_or_default().to_owned(),
        });
    Ok(ImageRecord {
        index,
        input_url,
        status: get_s(item, "status")
            .and_then(ImageStatus::parse)
            .ok_or_else(bad)?,
        output_key: get_s(item, "output_key").map(str::to_owned),
        input_bytes: get_n(item, "input_bytes"),
        output_bytes: get_n(item, "output_bytes"),
        width: get_n(item, "width"),
        height: get_n(item, "height"),
        original_kept: matches!(item.get("original_kept"), Some(AttributeValue::Bool(true))),
        error,
    })
}

/// The rows document's name: the fingerprint tells two different files
/// submitted under one ID at the same moment apart, so neither can
/// overwrite the rows the other's request item points at.
fn rows_key(new: &NewRequest) -> String {
    let tag = new.fingerprint.get(..16).unwrap_or(&new.fingerprint);
    format!("requests/{}/rows-{tag}.jsonl", new.id)
}

impl DynamoStore {
    /// A store on `table`, keeping requests' rows in `rows`.
    pub fn new(client: Client, table: impl Into<String>, rows: RowsBucket) -> Self {
        Self {
            client,
            table: table.into(),
            rows,
            ttl: DEFAULT_TTL,
            writes: None,
        }
    }

    /// How long items live after they are written (DynamoDB's TTL).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Counts every write per item in `log`.
    pub fn with_write_log(mut self, log: WriteLog) -> Self {
        self.writes = Some(log);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn expires_at(&self, from: DateTime<Utc>) -> AttributeValue {
        n(from.timestamp() + self.ttl.as_secs() as i64)
    }

    fn noted(&self, item: &Item) {
        if let Some(log) = &self.writes {
            log.note(item);
        }
    }

    async fn get_item(&self, key: Item, consistent: bool) -> PortResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| port_error("DynamoDB GetItem", e))?;
        Ok(out.item)
    }

    /// Every item of partition `pk` with a sort key in `from..=to`.
    async fn query(
        &self,
        pk: String,
        from: String,
        to: String,
        consistent: bool,
    ) -> PortResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_values(":pk", s(&pk))
                .expression_attribute_values(":from", s(&from))
                .expression_attribute_values(":to", s(&to))
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| port_error("DynamoDB Query", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// `(succeeded, failed)` of every finished shard, by shard.
    async fn done_shards(
        &self,
        id: Uuid,
        consistent: bool,
    ) -> PortResult<HashMap<u32, (u32, u32)>> {
        let items = self
            .query(pk(id), done_sk(0), done_sk(u32::MAX / 2), consistent)
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let shard = get_s(item, "sk")?.strip_prefix("D#")?.parse().ok()?;
                Some((shard, (get_n(item, "succeeded")?, get_n(item, "failed")?)))
            })
            .collect())
    }

    /// The counts of a request still being processed: finished shards from
    /// their done items, the others from their counter items.
    async fn live_progress(&self, id: Uuid, item: &Item) -> PortResult<Progress> {
        let total: u32 = get_n(item, "total").ok_or_else(|| corrupt("request", item))?;
        let shards = Shards::of(total);
        let done = self.done_shards(id, false).await?;
        let mut progress = Progress {
            total,
            ..Progress::default()
        };
        for (ok, ko) in done.values() {
            progress.succeeded += ok;
            progress.failed += ko;
        }
        let open: Vec<u32> = (0..shards.count())
            .filter(|k| !done.contains_key(k))
            .collect();
        // Owned chunks: a closure over borrowed slices is not `Send` enough for the trait's future.
        let chunks: Vec<Vec<u32>> = open.chunks(BATCH_GET).map(<[u32]>::to_vec).collect();
        let counters: Vec<Item> = futures_util::stream::iter(chunks)
            .map(|chunk| async move { self.batch_get(id, &chunk).await })
            .buffer_unordered(READS_IN_FLIGHT)
            .try_concat()
            .await?;
        for c in &counters {
            progress.succeeded += set_len(c, "ok");
            progress.failed += set_len(c, "ko");
        }
        Ok(progress)
    }

    /// The counter items of `shards` (absent ones are left out).
    async fn batch_get(&self, id: Uuid, shards: &[u32]) -> PortResult<Vec<Item>> {
        let mut keys: Vec<Item> = shards.iter().map(|k| key(shard_pk(id, *k), "C")).collect();
        let mut items = Vec::new();
        for attempt in 0..8u32 {
            if keys.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(crate::config::backoff(
                    Duration::from_millis(50),
                    attempt,
                    Duration::from_secs(2),
                ))
                .await;
            }
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .build()
                .map_err(|e| PortError::Permanent(format!("DynamoDB BatchGetItem: {e}")))?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| port_error("DynamoDB BatchGetItem", e))?;
            items.extend(
                out.responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default(),
            );
            keys = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        if !keys.is_empty() {
            return Err(PortError::Transient("DynamoDB left keys unread".into()));
        }
        Ok(items)
    }

    async fn layout(&self, id: Uuid) -> PortResult<Option<Layout>> {
        match self.get_item(request_key(id), true).await? {
            Some(item) => Layout::of(&item).map(Some),
            None => Ok(None),
        }
    }

    /// The rows of products `from..from + want` (fewer at the end).
    async fn read_rows(&self, layout: &Layout, from: u32, want: u32) -> PortResult<Vec<Row>> {
        let Some((start, end, _)) = rows::range_for(&layout.index, layout.rows_len, from, want)
        else {
            return Ok(Vec::new());
        };
        let bytes = self.rows.read(&layout.rows_key, start, end).await?;
        let mut rows = rows::decode_rows(&bytes).map_err(PortError::Permanent)?;
        rows.retain(|r| r.position >= from && r.position < from.saturating_add(want));
        Ok(rows)
    }

    /// Result items of the images with ordinals in `first..first + count`, by ordinal.
    async fn results(
        &self,
        id: Uuid,
        total: u32,
        first: u32,
        count: u32,
    ) -> PortResult<HashMap<u32, Item>> {
        if count == 0 {
            return Ok(HashMap::new());
        }
        let shards = Shards::of(total);
        let last = first + count - 1;
        let (k1, o1) = shards.locate(first);
        let (k2, o2) = shards.locate(last);
        let parts: Vec<Vec<(u32, Item)>> = futures_util::stream::iter(k1..=k2)
            .map(|k| {
                let from = if k == k1 { o1 } else { 0 };
                let to = if k == k2 { o2 } else { shards.size - 1 };
                async move {
                    let items = self
                        .query(shard_pk(id, k), image_sk(from), image_sk(to), true)
                        .await?;
                    Ok::<_, PortError>(
                        items
                            .into_iter()
                            .filter_map(|item| {
                                let offset: u32 =
                                    get_s(&item, "sk")?.strip_prefix("I#")?.parse().ok()?;
                                Some((k * shards.size + offset, item))
                            })
                            .collect(),
                    )
                }
            })
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    fn result_item(&self, k: ImageKey, outcome: &ImageOutcome, now: DateTime<Utc>) -> Item {
        let shards = Shards::of(k.total);
        let (shard, offset) = shards.locate(k.ordinal);
        let mut item = key(shard_pk(k.request_id, shard), image_sk(offset));
        item.insert("status".into(), s(outcome.status().as_str()));
        item.insert("updated_at".into(), s(ts(now)));
        item.insert("expires_at".into(), self.expires_at(now));
        match outcome {
            ImageOutcome::Succeeded(c) => {
                item.insert("output_key".into(), s(&c.output_key));
                item.insert("input_bytes".into(), n(c.input_bytes));
                item.insert("output_bytes".into(), n(c.output_bytes));
                item.insert("width".into(), n(c.width));
                item.insert("height".into(), n(c.height));
                item.insert(
                    "original_kept".into(),
                    AttributeValue::Bool(c.original_kept),
                );
            }
            ImageOutcome::Failed { error, input_bytes } => {
                item.insert("error_code".into(), s(error.code.as_str()));
                item.insert("error_message".into(), s(&error.message));
                if let Some(b) = input_bytes {
                    item.insert("input_bytes".into(), n(b));
                }
            }
        }
        item
    }

    /// Puts the image's result unless it has one; answers with the status
    /// that is stored (this one, or the earlier one) and whether this call wrote it.
    async fn put_result(
        &self,
        k: ImageKey,
        outcome: &ImageOutcome,
    ) -> PortResult<(ImageStatus, bool)> {
        let item = self.result_item(k, outcome, Utc::now());
        self.noted(&item);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok((outcome.status(), true)),
            Err(e) => {
                let old = match e.as_service_error() {
                    Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => c.item().cloned(),
                    _ => return Err(port_error("DynamoDB PutItem (image)", e)),
                };
                let stored = match old {
                    Some(item) => get_s(&item, "status").and_then(ImageStatus::parse),
                    // Emulators may not return the old item: read it.
                    None => {
                        let (shard, offset) = Shards::of(k.total).locate(k.ordinal);
                        self.get_item(key(shard_pk(k.request_id, shard), image_sk(offset)), true)
                            .await?
                            .and_then(|i| get_s(&i, "status").and_then(ImageStatus::parse))
                    }
                };
                let stored = stored.ok_or_else(|| {
                    PortError::Permanent(format!(
                        "image {} of {} has no status",
                        k.ordinal, k.request_id
                    ))
                })?;
                Ok((stored, false))
            }
        }
    }

    /// Adds the image to its shard's counter (a second add changes nothing)
    /// and answers with the shard's `(succeeded, failed)` after it.
    async fn count(&self, k: ImageKey, status: ImageStatus) -> PortResult<(u32, u32)> {
        let (shard, offset) = Shards::of(k.total).locate(k.ordinal);
        let set = if status == ImageStatus::Succeeded {
            "ok"
        } else {
            "ko"
        };
        let counter_key = key(shard_pk(k.request_id, shard), "C");
        self.noted(&counter_key);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(counter_key))
            .update_expression(
                "ADD #set :offset SET #expires_at = if_not_exists(#expires_at, :expires)",
            )
            .expression_attribute_names("#set", set)
            .expression_attribute_names("#expires_at", "expires_at")
            .expression_attribute_values(":offset", AttributeValue::Ns(vec![offset.to_string()]))
            .expression_attribute_values(":expires", self.expires_at(Utc::now()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| port_error("DynamoDB UpdateItem (count)", e))?;
        let item = out.attributes.unwrap_or_default();
        Ok((set_len(&item, "ok"), set_len(&item, "ko")))
    }

    /// Marks a full shard done (once), then reads whether every shard is.
    async fn shard_full(&self, k: ImageKey, counts: (u32, u32)) -> PortResult<Option<Progress>> {
        let shards = Shards::of(k.total);
        let (shard, _) = shards.locate(k.ordinal);
        let mut item = key(pk(k.request_id), done_sk(shard));
        item.insert("succeeded".into(), n(counts.0));
        item.insert("failed".into(), n(counts.1));
        item.insert("expires_at".into(), self.expires_at(Utc::now()));
        // Written once: a second writer finds it there, which is as good.
        self.put_new(item, "DynamoDB PutItem (shard done)").await?;
        let done = self.done_shards(k.request_id, true).await?;
        if done.len() as u32 != shards.count() {
            return Ok(None);
        }
        let (succeeded, failed) = done
            .values()
            .fold((0, 0), |(a, b), (ok, ko)| (a + ok, b + ko));
        Ok(Some(Progress {
            total: k.total,
            succeeded,
            failed,
        }))
    }

    /// Puts `item` unless an item with its key exists; false when one did.
    async fn put_new(&self, item: Item, what: &str) -> PortResult<bool> {
        self.noted(&item);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(port_error(what, e)),
        }
    }

    /// Updates the request item under `condition`; false when it failed.
    async fn update_request(
        &self,
        id: Uuid,
        condition: &str,
        update: &str,
        names: &[&str],
        values: Vec<(&str, AttributeValue)>,
        what: &str,
    ) -> PortResult<Result<Item, Option<Item>>> {
        let request = request_key(id);
        self.noted(&request);
        let mut call = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(request))
            .condition_expression(condition)
            .update_expression(update)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for name in names {
            call = call.expression_attribute_names(format!("#{name}"), *name);
        }
        for (k, v) in values {
            call = call.expression_attribute_values(k, v);
        }
        match call.send().await {
            Ok(out) => Ok(Ok(out.attributes.unwrap_or_default())),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => Ok(Err(c.item().cloned())),
                _ => Err(port_error(what, e)),
            },
        }
    }

    fn request_item(&self, new: &NewRequest, doc: &rows::RowsDocument) -> Item {
        let now = ts(new.created_at);
        let mut item = request_key(new.id);
        item.insert("created_at".into(), s(&now));
        item.insert("updated_at".into(), s(now));
        item.insert("total".into(), n(new.image_count()));
        item.insert("queued".into(), n(0));
        item.insert("fo_next".into(), n(0));
        item.insert("product_count".into(), n(new.products.len()));
        item.insert("fingerprint".into(), s(&new.fingerprint));
        if let Some(client) = &new.client_id {
            item.insert("client_id".into(), s(client));
        }
        item.insert("rows_key".into(), s(rows_key(new)));
        item.insert("rows_len".into(), n(doc.bytes.len()));
        item.insert("rows_index".into(), s(rows::encode_index(&doc.index)));
        item.insert(
            "warnings".into(),
            AttributeValue::L(new.warnings.iter().map(s).collect()),
        );
        if let Some(url) = &new.webhook_url {
            item.insert("webhook_url".into(), s(url));
            item.insert("webhook_status".into(), s(WebhookStatus::Pending.as_str()));
            item.insert("webhook_attempts".into(), n(0));
        }
        item.insert("expires_at".into(), self.expires_at(new.created_at));
        item
    }

    async fn existing(&self, id: Uuid) -> PortResult<CreateOutcome> {
        match self.get_request(id).await? {
            Some(r) => Ok(CreateOutcome::Existing(r)),
            None => Err(PortError::Transient(format!(
                "request {id} vanished while being read"
            ))),
        }
    }
}

#[async_trait]
impl JobStore for DynamoStore {
    /// One rows document on S3 and one conditional put of the request item:
    /// a constant number of calls whatever the size of the request. The put
    /// is the commit: a concurrent create of the same ID finds the winner's
    /// item and answers with it (a repeat, or a conflict if its file
    /// differs), so there is no window in which a request half exists.
    async fn create_request(&self, new: &NewRequest) -> PortResult<CreateOutcome> {
        if let Some(existing) = self.get_request(new.id).await? {
            return Ok(CreateOutcome::Existing(existing));
        }
        let doc = rows::encode(&new.products);
        let item = self.request_item(new, &doc);
        self.rows.put(&rows_key(new), doc.bytes).await?;
        if self.put_new(item, "DynamoDB PutItem (request)").await? {
            Ok(CreateOutcome::Created)
        } else {
            self.existing(new.id).await
        }
    }

    async fn get_request(&self, id: Uuid) -> PortResult<Option<RequestRecord>> {
        let Some(item) = self.get_item(request_key(id), true).await? else {
            return Ok(None);
        };
        let progress = if get_s(&item, "terminal").is_some() {
            Progress {
                total: get_n(&item, "total").ok_or_else(|| corrupt("request", &item))?,
                succeeded: get_n(&item, "succeeded").unwrap_or(0),
                failed: get_n(&item, "failed").unwrap_or(0),
            }
        } else {
            self.live_progress(id, &item).await?
        };
        request_from_item(&item, progress).map(Some)
    }

    async fn list_products(
        &self,
        id: Uuid,
        after: Option<u32>,
        limit: u32,
    ) -> PortResult<Vec<ProductRecord>> {
        let Some(layout) = self.layout(id).await? else {
            return Ok(Vec::new());
        };
        let from = after.map_or(0, |a| a.saturating_add(1));
        if from >= layout.product_count {
            return Ok(Vec::new());
        }
        let rows = self.read_rows(&layout, from, limit).await?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(Vec::new());
        };
        let first_ordinal = first.first_ordinal;
        let count = last.first_ordinal + last.urls.len() as u32 - first_ordinal;
        let mut results = self.results(id, layout.total, first_ordinal, count).await?;
        rows.into_iter()
            .map(|row| {
                let images = row
                    .urls
                    .into_iter()
                    .enumerate()
                    .map(|(i, url)| {
                        let index = i as u32 + 1;
                        match results.remove(&(row.first_ordinal + i as u32)) {
                            Some(item) => image_from_item(&item, index, url),
                            None => Ok(ImageRecord::pending(index, url)),
                        }
                    })
                    .collect::<PortResult<Vec<_>>>()?;
                Ok(ProductRecord {
                    position: row.position,
                    serial_number: row.serial_number,
                    product_name: row.product_name,
                    images,
                })
            })
            .collect()
    }

    /// `Pending` when the image has no result yet (also when its request is
    /// unknown: the image's own item is all this reads).
    async fn image_status(&self, k: ImageKey) -> PortResult<Option<ImageStatus>> {
        if k.total == 0 || k.ordinal >= k.total {
            return Ok(None);
        }
        let (shard, offset) = Shards::of(k.total).locate(k.ordinal);
        let item = self
            .get_item(key(shard_pk(k.request_id, shard), image_sk(offset)), true)
            .await?;
        Ok(Some(match item {
            Some(i) => get_s(&i, "status")
                .and_then(ImageStatus::parse)
                .ok_or_else(|| corrupt("image", &i))?,
            None => ImageStatus::Pending,
        }))
    }

    async fn finish_image(&self, k: ImageKey, outcome: &ImageOutcome) -> PortResult<Finished> {
        if k.total == 0 || k.ordinal >= k.total {
            return Err(PortError::Permanent(format!(
                "image {} is outside request {} of {} images",
                k.ordinal, k.request_id, k.total
            )));
        }
        let (stored, applied) = self.put_result(k, outcome).await?;
        let counts = self.count(k, stored).await?;
        let shards = Shards::of(k.total);
        let all_done = if counts.0 + counts.1 >= shards.len(shards.locate(k.ordinal).0) {
            self.shard_full(k, counts).await?
        } else {
            None
        };
        Ok(Finished { applied, all_done })
    }

    async fn complete_request(&self, id: Uuid, progress: Progress) -> PortResult<bool> {
        if !progress.is_done() {
            return Ok(false);
        }
        // The counts live on the shards' done items, which never change
        // once written: the claimed counts must be theirs.
        let shards = Shards::of(progress.total);
        let done = self.done_shards(id, true).await?;
        let (succeeded, failed) = done
            .values()
            .fold((0, 0), |(a, b), (ok, ko)| (a + ok, b + ko));
        if done.len() as u32 != shards.count()
            || (succeeded, failed) != (progress.succeeded, progress.failed)
        {
            return Ok(false);
        }
        let status = RequestStatus::from_progress(&progress);
        let now = ts(Utc::now());
        let done = self
            .update_request(
                id,
                "attribute_exists(pk) AND attribute_not_exists(#terminal) AND #total = :total",
                "SET #terminal = :terminal, #completed_at = :now, #updated_at = :now, \
                 #succeeded = :succeeded, #failed = :failed",
                &[
                    "terminal",
                    "total",
                    "completed_at",
                    "updated_at",
                    "succeeded",
                    "failed",
                ],
                vec![
                    (":total", n(progress.total)),
                    (":succeeded", n(progress.succeeded)),
                    (":failed", n(progress.failed)),
                    (":terminal", s(status.as_str())),
                    (":now", s(now)),
                ],
                "DynamoDB UpdateItem (complete)",
            )
            .await?;
        Ok(done.is_ok())
    }

    async fn record_webhook(&self, id: Uuid, state: &WebhookState) -> PortResult<()> {
        // Like the embedded store: recording on a request that is gone changes nothing.
        self.update_request(
            id,
            "attribute_exists(pk)",
            "SET #webhook_status = :status, #webhook_attempts = :attempts, #updated_at = :now",
            &["webhook_status", "webhook_attempts", "updated_at"],
            vec![
                (":status", s(state.status.as_str())),
                (":attempts", n(state.attempts)),
                (":now", s(ts(Utc::now()))),
            ],
            "DynamoDB UpdateItem (webhook)",
        )
        .await
        .map(|_| ())
    }

    async fn claim_fan_out(
        &self,
        id: Uuid,
        owner: Uuid,
        lease: Duration,
    ) -> PortResult<FanOutClaim> {
        let now = now_secs();
        let result = self
            .update_request(
                id,
                "attribute_exists(pk) AND #fo_next < #product_count AND \
                 (attribute_not_exists(#fo_owner) OR #fo_lease <= :now OR #fo_owner = :owner)",
                "SET #fo_owner = :owner, #fo_lease = :until",
                &["fo_next", "product_count", "fo_owner", "fo_lease"],
                vec![
                    (":now", n(now)),
                    (":owner", s(owner.to_string())),
                    (":until", n(now + lease.as_secs() as i64)),
                ],
                "DynamoDB UpdateItem (fan-out claim)",
            )
            .await?;
        Ok(match result {
            Ok(item) => FanOutClaim::Claimed {
                next: get_n(&item, "fo_next").unwrap_or(0),
                queued: get_n(&item, "queued").unwrap_or(0),
            },
            Err(None) => FanOutClaim::Missing,
            Err(Some(old)) => {
                let next: u32 = get_n(&old, "fo_next").unwrap_or(0);
                let products: u32 = get_n(&old, "product_count").unwrap_or(0);
                if next >= products {
                    FanOutClaim::Finished
                } else {
                    let until: i64 = get_n(&old, "fo_lease").unwrap_or(now);
                    FanOutClaim::Busy {
                        retry_after: Duration::from_secs((until - now).max(1) as u64),
                    }
                }
            }
        })
    }

    async fn fan_out_slice(&self, id: Uuid, from: u32) -> PortResult<Option<FanOutSlice>> {
        let Some(layout) = self.layout(id).await? else {
            return Ok(None);
        };
        if from >= layout.product_count {
            return Ok(None);
        }
        // One segment: the one that starts at `from` (a slice boundary).
        let segment = rows::segment_starting_at(&layout.index, from).ok_or_else(|| {
            PortError::Permanent(format!("fan-out cursor {from} is not a segment boundary"))
        })?;
        let next = layout
            .index
            .get(segment + 1)
            .map_or(layout.product_count, |s| s.first_product);
        let rows = self.read_rows(&layout, from, next - from).await?;
        let jobs = rows
            .iter()
            .flat_map(|row| row.jobs(id, layout.total))
            .collect();
        Ok(Some(FanOutSlice { jobs, next }))
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
        let now = now_secs();
        let result = self
            .update_request(
                id,
                "#fo_owner = :owner AND #fo_next = :from",
                "SET #fo_next = :next, #fo_lease = :until, #updated_at = :now_ts ADD #queued :jobs",
                &["fo_owner", "fo_next", "fo_lease", "updated_at", "queued"],
                vec![
                    (":owner", s(owner.to_string())),
                    (":from", n(from)),
                    (":next", n(next)),
                    (":until", n(now + lease.as_secs() as i64)),
                    (":now_ts", s(ts(Utc::now()))),
                    (":jobs", n(jobs)),
                ],
                "DynamoDB UpdateItem (fan-out advance)",
            )
            .await?;
        Ok(result.is_ok())
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

/// The request ID of a request item's key (`pk = REQ#{id}`, `sk = A`);
/// `None` for product, image and claim items.
pub fn request_id_of_key(pk: &str, sk: &str) -> Option<Uuid> {
    if sk != "A" {
        return None;
    }
    pk.strip_prefix("REQ#")
        .and_then(|id| Uuid::parse_str(id).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sort_keys_order_a_shard_in_input_order() {
        let mut keys = vec![image_sk(10), image_sk(2), image_sk(199), image_sk(0)];
        keys.sort();
        assert_eq!(
            keys,
            vec![image_sk(0), image_sk(2), image_sk(10), image_sk(199)]
        );
        // Done items sort after the request item, in shard order.
        let mut done = vec![done_sk(12), done_sk(3), "A".to_owned()];
        done.sort();
        assert_eq!(done, vec!["A".to_owned(), done_sk(3), done_sk(12)]);
        // A shard's partition never collides with the request's own.
        let id = Uuid::new_v4();
        assert_ne!(shard_pk(id, 0), pk(id));
        assert_eq!(request_id_of_key(&shard_pk(id, 0), "A"), None);
    }

    #[test]
    fn only_request_items_name_a_request() {
        let id = Uuid::new_v4();
        assert_eq!(request_id_of_key(&pk(id), "A"), Some(id));
        assert_eq!(request_id_of_key(&pk(id), &done_sk(0)), None);
        assert_eq!(request_id_of_key("REQ#nope", "A"), None);
    }
}
