//! The webhook attempt claim, on the request item: `webhook_claim` (the
//! attempt held) and `webhook_claim_until` (Unix milliseconds). Both change
//! only here; `record_webhook` moves `webhook_attempts` and the status on.
//! These writes show up in the stream as changes of an already terminal
//! item, which the notify function's filter drops.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use uuid::Uuid;

use super::{DynamoStore, get_n, get_s, has_code, n, port_error, request_key, s};
use crate::domain::WebhookStatus;
use crate::ports::{PortResult, WebhookClaim};

impl DynamoStore {
    /// See [`JobStore::claim_webhook_attempt`](crate::ports::JobStore::claim_webhook_attempt).
    pub(super) async fn claim_webhook(
        &self,
        id: Uuid,
        attempt: u32,
        lease: Duration,
    ) -> PortResult<WebhookClaim> {
        if attempt == 0 {
            return Ok(WebhookClaim::Done);
        }
        let now = Utc::now().timestamp_millis();
        // A request stored before any attempt may lack the counter: zero then.
        let attempts_match = if attempt == 1 {
            "(attribute_not_exists(#attempts) OR #attempts = :previous)"
        } else {
            "#attempts = :previous"
        };
        let result = self
            .client
            .update_item()
            .table_name(self.table())
            .set_key(Some(request_key(id)))
            .condition_expression(format!(
                "attribute_exists(#url) AND attribute_exists(#terminal) \
                 AND (attribute_not_exists(#status) OR #status = :pending) AND {attempts_match} \
                 AND (attribute_not_exists(#claim) OR #claim < :attempt OR #until < :now)"
            ))
            .update_expression("SET #claim = :attempt, #until = :until")
            .expression_attribute_names("#url", "webhook_url")
            .expression_attribute_names("#terminal", "terminal")
            .expression_attribute_names("#status", "webhook_status")
            .expression_attribute_names("#attempts", "webhook_attempts")
            .expression_attribute_names("#claim", "webhook_claim")
            .expression_attribute_names("#until", "webhook_claim_until")
            .expression_attribute_values(":pending", s(WebhookStatus::Pending.as_str()))
            .expression_attribute_values(":previous", n(attempt - 1))
            .expression_attribute_values(":attempt", n(attempt))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":until", n(now.saturating_add(lease.as_millis() as i64)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(WebhookClaim::Claimed),
            Err(e) if has_code(&e, "ConditionalCheckFailedException") => {
                // Why it failed decides between "later" and "never": read the item.
                let item = self.get_item(request_key(id), true).await?;
                Ok(match item {
                    Some(item) => why_not(&item, attempt),
                    None => WebhookClaim::Done,
                })
            }
            Err(e) => Err(port_error("DynamoDB UpdateItem (webhook claim)", e)),
        }
    }
}

/// Why a claim of `attempt` was refused, from the request item as it is now.
fn why_not(item: &super::Item, attempt: u32) -> WebhookClaim {
    let pending = get_s(item, "webhook_status")
        .and_then(WebhookStatus::parse)
        .is_none_or(|s| s == WebhookStatus::Pending);
    let attempts: u32 = get_n(item, "webhook_attempts").unwrap_or(0);
    let owed = item.contains_key("webhook_url")
        && matches!(item.get("terminal"), Some(AttributeValue::S(_)))
        && pending
        && attempts < attempt;
    if owed {
        // An earlier attempt is not recorded yet, or another caller holds this one.
        WebhookClaim::NotYet
    } else {
        WebhookClaim::Done
    }
}
