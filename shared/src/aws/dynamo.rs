//! The job store on DynamoDB: one table, one partition per request.
//!
//! | item    | `pk`       | `sk`                       |
//! |---------|------------|----------------------------|
//! | request | `REQ#{id}` | `A`                        |
//! | claim   | `REQ#{id}` | `C`                        |
//! | product | `REQ#{id}` | `P#{position:06}`          |
//! | image   | `REQ#{id}` | `P#{position:06}#I#{index:05}` |
//!
//! A product's key is a prefix of its images' keys, so one `Query` from
//! `P#{first}` returns products and their images interleaved in input
//! order. Counters live on the request item and change only in the same
//! transaction as an image's own conditional `pending →` transition. Every
//! item carries `expires_at` (epoch seconds) for DynamoDB's TTL.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use uuid::Uuid;

use super::error::{has_code, port_error};
use crate::domain::{
    ErrorCode, ImageError, ImageKey, ImageOutcome, ImageRecord, ImageStatus, NewRequest,
    ProductRecord, Progress, RequestRecord, RequestStatus, WebhookState, WebhookStatus,
};
use crate::ports::{CreateOutcome, Finished, JobStore, PortError, PortResult, WebhookClaim};

mod webhooks;

pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a creator holds the claim on a request ID. Longer than any
/// upload or ingest invocation can run, so a live creator never loses it.
const CLAIM_LEASE: Duration = Duration::from_secs(15 * 60);
/// `BatchWriteItem` takes at most 25 items.
const BATCH: usize = 25;
const BATCHES_IN_FLIGHT: usize = 8;
const MAX_TRIES: u32 = 8;

type Item = HashMap<String, AttributeValue>;

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    ttl: Duration,
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

fn product_sk(position: u32) -> String {
    format!("P#{position:06}")
}

fn image_sk(position: u32, index: u32) -> String {
    format!("P#{position:06}#I#{index:05}")
}

fn key(id: Uuid, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk(id))), ("sk".to_owned(), s(sk))])
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

fn corrupt(what: &str, item: &Item) -> PortError {
    let sk = get_s(item, "sk").unwrap_or("?");
    PortError::Permanent(format!("stored {what} item {sk} is missing a field"))
}

/// Backoff between internal retries: 50 ms, 100 ms, … capped at 2 s.
async fn pause(attempt: u32) {
    let ms = 50u64.saturating_mul(1 << attempt.min(6)).min(2000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn request_from_item(item: &Item) -> PortResult<RequestRecord> {
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
        progress: Progress {
            total: get_n(item, "total").ok_or_else(bad)?,
            succeeded: get_n(item, "succeeded").unwrap_or(0),
            failed: get_n(item, "failed").unwrap_or(0),
        },
        queued: get_n(item, "total").ok_or_else(bad)?,
        product_count: get_n(item, "product_count").ok_or_else(bad)?,
        webhook,
        warnings,
        fingerprint: get_s(item, "fingerprint").unwrap_or_default().to_owned(),
    })
}

fn image_from_item(item: &Item) -> PortResult<ImageRecord> {
    let bad = || corrupt("image", item);
    let error = get_s(item, "error_code")
        .and_then(ErrorCode::parse)
        .map(|code| ImageError {
            code,
            message: get_s(item, "error_message").unwrap_or_default().to_owned(),
        });
    Ok(ImageRecord {
        index: get_n(item, "idx").ok_or_else(bad)?,
        input_url: get_s(item, "input_url").ok_or_else(bad)?.to_owned(),
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

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            ttl: DEFAULT_TTL,
        }
    }

    /// How long items live after the request was created (DynamoDB's TTL).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn expires_at(&self, created: DateTime<Utc>) -> AttributeValue {
        n(created.timestamp() + self.ttl.as_secs() as i64)
    }

    async fn get_item(&self, key: Item) -> PortResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| port_error("DynamoDB GetItem", e))?;
        Ok(out.item)
    }

    /// Writes `items` with `BatchWriteItem`, a few batches at a time, until
    /// DynamoDB has taken every one of them.
    async fn put_all(&self, items: Vec<Item>) -> PortResult<()> {
        let batches: Vec<Vec<WriteRequest>> = items
            .chunks(BATCH)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|item| {
                        let put = PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .map_err(|e| {
                                PortError::Permanent(format!("DynamoDB put request: {e}"))
                            })?;
                        Ok(WriteRequest::builder().put_request(put).build())
                    })
                    .collect::<PortResult<Vec<_>>>()
            })
            .collect::<PortResult<_>>()?;
        let results: Vec<PortResult<()>> = futures_util::stream::iter(batches)
            .map(|batch| self.write_batch(batch))
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn write_batch(&self, mut batch: Vec<WriteRequest>) -> PortResult<()> {
        for attempt in 0..MAX_TRIES {
            if attempt > 0 {
                pause(attempt).await;
            }
            let result = self
                .client
                .batch_write_item()
                .request_items(&self.table, batch.clone())
                .send()
                .await;
            match result {
                Ok(out) => {
                    batch = out
                        .unprocessed_items
                        .and_then(|mut m| m.remove(&self.table))
                        .unwrap_or_default();
                    if batch.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let err = port_error("DynamoDB BatchWriteItem", e);
                    if !err.is_transient() || attempt + 1 == MAX_TRIES {
                        return Err(err);
                    }
                }
            }
        }
        Err(PortError::Transient(format!(
            "DynamoDB left {} item(s) unwritten after {MAX_TRIES} tries",
            batch.len()
        )))
    }

    /// Takes the right to write this request's items. See `create_request`.
    async fn claim(&self, new: &NewRequest, now: DateTime<Utc>) -> PortResult<bool> {
        let mut item = key(new.id, "C");
        item.insert("fingerprint".into(), s(&new.fingerprint));
        item.insert(
            "lease_until".into(),
            n(now.timestamp() + CLAIM_LEASE.as_secs() as i64),
        );
        item.insert("expires_at".into(), self.expires_at(now));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #lease_until < :now")
            .expression_attribute_names("#lease_until", "lease_until")
            .expression_attribute_values(":now", n(now.timestamp()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(port_error("DynamoDB PutItem (claim)", e)),
        }
    }

    fn items_of(&self, new: &NewRequest) -> Vec<Item> {
        let expires = self.expires_at(new.created_at);
        let mut items = Vec::with_capacity(new.products.len() + new.image_count() as usize);
        for (position, product) in new.products.iter().enumerate() {
            let position = position as u32;
            let mut item = key(new.id, product_sk(position));
            item.insert("position".into(), n(position));
            item.insert("serial_number".into(), n(product.serial_number));
            item.insert("product_name".into(), s(&product.product_name));
            item.insert("image_count".into(), n(product.urls.len()));
            item.insert("expires_at".into(), expires.clone());
            items.push(item);
            for (i, url) in product.urls.iter().enumerate() {
                let index = i as u32 + 1;
                let mut item = key(new.id, image_sk(position, index));
                item.insert("position".into(), n(position));
                item.insert("idx".into(), n(index));
                item.insert("input_url".into(), s(url));
                item.insert("status".into(), s(ImageStatus::Pending.as_str()));
                item.insert("expires_at".into(), expires.clone());
                items.push(item);
            }
        }
        items
    }

    fn request_item(&self, new: &NewRequest) -> Item {
        let now = ts(new.created_at);
        let mut item = key(new.id, "A");
        item.insert("created_at".into(), s(&now));
        item.insert("updated_at".into(), s(now));
        item.insert("total".into(), n(new.image_count()));
        item.insert("succeeded".into(), n(0));
        item.insert("failed".into(), n(0));
        item.insert("product_count".into(), n(new.products.len()));
        item.insert("fingerprint".into(), s(&new.fingerprint));
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
                "request {id} is being stored by another submission; try again shortly"
            ))),
        }
    }

    async fn image_exists(&self, k: ImageKey) -> PortResult<bool> {
        Ok(self
            .get_item(key(k.request_id, image_sk(k.product, k.image)))
            .await?
            .is_some())
    }

    async fn progress(&self, id: Uuid) -> PortResult<Option<Progress>> {
        Ok(self.get_request(id).await?.map(|r| r.progress))
    }

    fn image_update(&self, k: ImageKey, outcome: &ImageOutcome, now: &str) -> PortResult<Update> {
        let mut values: Item = HashMap::from([
            (":pending".to_owned(), s(ImageStatus::Pending.as_str())),
            (":status".to_owned(), s(outcome.status().as_str())),
        ]);
        // Every attribute goes through a `#name` alias: several are DynamoDB reserved words.
        let mut sets = vec!["status", "updated_at"];
        values.insert(":updated_at".into(), s(now));
        match outcome {
            ImageOutcome::Succeeded(c) => {
                values.insert(":output_key".into(), s(&c.output_key));
                values.insert(":input_bytes".into(), n(c.input_bytes));
                values.insert(":output_bytes".into(), n(c.output_bytes));
                values.insert(":width".into(), n(c.width));
                values.insert(":height".into(), n(c.height));
                values.insert(
                    ":original_kept".into(),
                    AttributeValue::Bool(c.original_kept),
                );
                sets.extend([
                    "output_key",
                    "input_bytes",
                    "output_bytes",
                    "width",
                    "height",
                    "original_kept",
                ]);
            }
            ImageOutcome::Failed { error, input_bytes } => {
                values.insert(":error_code".into(), s(error.code.as_str()));
                values.insert(":error_message".into(), s(&error.message));
                sets.extend(["error_code", "error_message"]);
                if let Some(b) = input_bytes {
                    values.insert(":input_bytes".into(), n(b));
                    sets.push("input_bytes");
                }
            }
        }
        let update = sets
            .iter()
            .map(|a| format!("#{a} = :{a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let names = sets
            .iter()
            .map(|a| (format!("#{a}"), (*a).to_owned()))
            .collect();
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(k.request_id, image_sk(k.product, k.image))))
            .condition_expression("#status = :pending")
            .update_expression(format!("SET {update}"))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| PortError::Permanent(format!("DynamoDB update: {e}")))
    }

    fn counter_update(&self, k: ImageKey, status: ImageStatus, now: &str) -> PortResult<Update> {
        let counter = if status == ImageStatus::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(k.request_id, "A")))
            // Never create a request item out of thin air for an expired request.
            .condition_expression("attribute_exists(pk)")
            .update_expression("ADD #counter :one SET #updated_at = :now")
            .expression_attribute_names("#counter", counter)
            .expression_attribute_names("#updated_at", "updated_at")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(now))
            .build()
            .map_err(|e| PortError::Permanent(format!("DynamoDB update: {e}")))
    }
}

/// What one `TransactWriteItems` call for an image came to.
enum Transition {
    Applied,
    /// The image's condition failed: it had already finished (or is absent).
    ImageNotPending,
    /// The request item is gone (expired).
    RequestMissing,
    /// Another transaction touched the same items at the same moment.
    Conflict,
}

#[async_trait]
impl JobStore for DynamoStore {
    /// All or nothing, idempotent for one ID, and safe against a concurrent
    /// create of the same ID with other content (an `Idempotency-Key`
    /// reused for a different file at the same moment):
    ///
    /// 1. An existing request item is returned as it is; nothing is written.
    /// 2. The creator takes a claim item (`sk = C`) with a conditional put
    ///    that succeeds only if no live claim exists. Only the claim holder
    ///    writes product and image items, so two different files can never
    ///    interleave their items under one ID. A concurrent loser re-reads:
    ///    the request item if it now exists (`Existing`, which the service
    ///    turns into a 409 or a repeat answer), else a transient error
    ///    ("being stored, try again"). A creator that died leaves a claim
    ///    that lapses after [`CLAIM_LEASE`]; a later attempt takes it over
    ///    and rewrites every item.
    /// 3. Product and image items go in with idempotent `BatchWriteItem`
    ///    puts, then the request item LAST with `attribute_not_exists(pk)`.
    ///    Readers start from the request item, so nobody sees a request
    ///    before all of its items exist: a crash before step 3 ends leaves
    ///    only unreachable items, which the next attempt overwrites and TTL
    ///    removes. Leftovers of a dead attempt beyond this request's own
    ///    products or images are ignored by `list_products` (it stops at
    ///    `product_count` and each product's `image_count`).
    async fn create_request(&self, new: &NewRequest) -> PortResult<CreateOutcome> {
        if let Some(existing) = self.get_request(new.id).await? {
            return Ok(CreateOutcome::Existing(existing));
        }
        if !self.claim(new, Utc::now()).await? {
            return self.existing(new.id).await;
        }
        self.put_all(self.items_of(new)).await?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.request_item(new)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(CreateOutcome::Created),
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => {
                self.existing(new.id).await
            }
            Err(e) => Err(port_error("DynamoDB PutItem (request)", e)),
        }
    }

    async fn get_request(&self, id: Uuid) -> PortResult<Option<RequestRecord>> {
        self.get_item(key(id, "A"))
            .await?
            .as_ref()
            .map(request_from_item)
            .transpose()
    }

    async fn list_products(
        &self,
        id: Uuid,
        after: Option<u32>,
        limit: u32,
    ) -> PortResult<Vec<ProductRecord>> {
        let Some(request) = self.get_item(key(id, "A")).await? else {
            return Ok(Vec::new());
        };
        let product_count: u32 = get_n(&request, "product_count").unwrap_or(0);
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut products: Vec<ProductRecord> = Vec::new();
        // Images each product may have: leftovers of a dead attempt beyond it are ignored.
        let mut image_counts: Vec<u32> = Vec::new();
        let mut start_key: Option<Item> = None;
        'pages: loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND #sk >= :from")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_values(":pk", s(pk(id)))
                .expression_attribute_values(":from", s(product_sk(start)))
                .consistent_read(true)
                .limit(500)
                .set_exclusive_start_key(start_key.take())
                .send()
                .await
                .map_err(|e| port_error("DynamoDB Query", e))?;
            for item in out.items.unwrap_or_default() {
                let position: u32 =
                    get_n(&item, "position").ok_or_else(|| corrupt("product", &item))?;
                if position >= product_count {
                    break 'pages;
                }
                if item.contains_key("idx") {
                    let (Some(product), Some(count)) = (products.last_mut(), image_counts.last())
                    else {
                        continue;
                    };
                    let image = image_from_item(&item)?;
                    if product.position == position && image.index <= *count {
                        product.images.push(image);
                    }
                } else {
                    if products.len() == limit as usize {
                        break 'pages;
                    }
                    products.push(ProductRecord {
                        position,
                        serial_number: get_n(&item, "serial_number")
                            .ok_or_else(|| corrupt("product", &item))?,
                        product_name: get_s(&item, "product_name").unwrap_or_default().to_owned(),
                        images: Vec::new(),
                    });
                    image_counts.push(get_n(&item, "image_count").unwrap_or(u32::MAX));
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start_key = Some(k),
                _ => break,
            }
        }
        Ok(products)
    }

    async fn image_status(&self, k: ImageKey) -> PortResult<Option<ImageStatus>> {
        let item = self
            .get_item(key(k.request_id, image_sk(k.product, k.image)))
            .await?;
        Ok(item
            .as_ref()
            .and_then(|i| get_s(i, "status"))
            .and_then(ImageStatus::parse))
    }

    async fn finish_image(&self, k: ImageKey, outcome: &ImageOutcome) -> PortResult<Finished> {
        let missing = || {
            PortError::Permanent(format!(
                "no image {}/{}/{}",
                k.request_id, k.product, k.image
            ))
        };
        let mut attempt = 0;
        let applied = loop {
            let now = ts(Utc::now());
            let result = self
                .client
                .transact_write_items()
                .transact_items(
                    TransactWriteItem::builder()
                        .update(self.image_update(k, outcome, &now)?)
                        .build(),
                )
                .transact_items(
                    TransactWriteItem::builder()
                        .update(self.counter_update(k, outcome.status(), &now)?)
                        .build(),
                )
                .send()
                .await;
            let transition = match result {
                Ok(_) => Transition::Applied,
                Err(e) => {
                    let reasons: Vec<Option<String>> = match e.as_service_error() {
                        Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => {
                            c.cancellation_reasons().iter().map(|r| r.code().map(str::to_owned)).collect()
                        }
                        _ => return Err(port_error("DynamoDB TransactWriteItems", e)),
                    };
                    let code = |i: usize| reasons.get(i).cloned().flatten().unwrap_or_default();
                    if code(0) == "ConditionalCheckFailed" {
                        Transition::ImageNotPending
                    } else if code(1) == "ConditionalCheckFailed" {
                        Transition::RequestMissing
                    } else if reasons.iter().flatten().any(|c| c == "TransactionConflict") {
                        Transition::Conflict
                    } else {
                        return Err(port_error("DynamoDB TransactWriteItems", e));
                    }
                }
            };
            match transition {
                Transition::Applied => break true,
                Transition::ImageNotPending => {
                    if self.image_exists(k).await? {
                        break false;
                    }
                    return Err(missing());
                }
                Transition::RequestMissing => return Err(missing()),
                // The condition is re-checked on the next try, so retrying can never double-count.
                Transition::Conflict if attempt + 1 < MAX_TRIES => {
                    attempt += 1;
                    pause(attempt).await;
                }
                Transition::Conflict => {
                    return Err(PortError::Transient(
                        "DynamoDB: the image transaction kept conflicting".into(),
                    ));
                }
            }
        };
        let progress = self.progress(k.request_id).await?.ok_or_else(missing)?;
        Ok(Finished { applied, progress })
    }

    async fn complete_request(&self, id: Uuid, progress: Progress) -> PortResult<bool> {
        if !progress.is_done() {
            return Ok(false);
        }
        let status = RequestStatus::from_progress(&progress);
        let now = ts(Utc::now());
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id, "A")))
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(#terminal) \
                 AND #total = :total AND #succeeded = :succeeded AND #failed = :failed",
            )
            .update_expression(
                "SET #terminal = :terminal, #completed_at = :now, #updated_at = :now",
            )
            .expression_attribute_names("#terminal", "terminal")
            .expression_attribute_names("#total", "total")
            .expression_attribute_names("#succeeded", "succeeded")
            .expression_attribute_names("#failed", "failed")
            .expression_attribute_names("#completed_at", "completed_at")
            .expression_attribute_names("#updated_at", "updated_at")
            .expression_attribute_values(":total", n(progress.total))
            .expression_attribute_values(":succeeded", n(progress.succeeded))
            .expression_attribute_values(":failed", n(progress.failed))
            .expression_attribute_values(":terminal", s(status.as_str()))
            .expression_attribute_values(":now", s(now))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(port_error("DynamoDB UpdateItem (complete)", e)),
        }
    }

    async fn record_webhook(&self, id: Uuid, state: &WebhookState) -> PortResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(id, "A")))
            .condition_expression("attribute_exists(pk)")
            .update_expression(
                "SET #webhook_status = :status, #webhook_attempts = :attempts, #updated_at = :now",
            )
            .expression_attribute_names("#webhook_status", "webhook_status")
            .expression_attribute_names("#webhook_attempts", "webhook_attempts")
            .expression_attribute_names("#updated_at", "updated_at")
            .expression_attribute_values(":status", s(state.status.as_str()))
            .expression_attribute_values(":attempts", n(state.attempts))
            .expression_attribute_values(":now", s(ts(Utc::now())))
            .send()
            .await;
        match result {
            // Like the embedded store: recording on a request that is gone changes nothing.
            Ok(_) => Ok(()),
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(port_error("DynamoDB UpdateItem (webhook)", e)),
        }
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
    fn sort_keys_order_products_then_their_images_in_input_order() {
        let mut keys = vec![
            product_sk(10),
            image_sk(2, 10),
            product_sk(2),
            image_sk(2, 2),
            image_sk(10, 1),
            product_sk(3),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                product_sk(2),
                image_sk(2, 2),
                image_sk(2, 10),
                product_sk(3),
                product_sk(10),
                image_sk(10, 1)
            ]
        );
        // The request and claim items sort before every product.
        assert!("A" < product_sk(0).as_str() && "C" < product_sk(0).as_str());
    }

    #[test]
    fn only_request_items_name_a_request() {
        let id = Uuid::new_v4();
        assert_eq!(request_id_of_key(&pk(id), "A"), Some(id));
        assert_eq!(request_id_of_key(&pk(id), &product_sk(0)), None);
        assert_eq!(request_id_of_key("REQ#nope", "A"), None);
    }
}
