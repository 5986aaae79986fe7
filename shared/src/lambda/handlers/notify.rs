//! `notify`: DynamoDB stream records of request items whose status became
//! terminal → the first attempt of each one's webhook, queued on the
//! webhook queue (the `deliver` function makes the attempts). Nothing is
//! POSTed here, so a slow receiver never holds up the stream. The
//! template's filter already lets only those records through; the check is
//! repeated here so that an unfiltered stream (or a test feeding every
//! record) behaves the same.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use futures_util::future::join_all;
use serde_dynamo::AttributeValue;
use uuid::Uuid;

use crate::adapters::dynamo::request_id_of_key;
use crate::ports::WebhookScheduler;
use crate::services::notify;

fn string<'a>(item: &'a serde_dynamo::Item, name: &str) -> Option<&'a str> {
    match item.inner().get(name) {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

/// The request whose item this record shows reaching a terminal status.
pub fn became_terminal(record: &EventRecord) -> Option<Uuid> {
    if !matches!(record.event_name.as_str(), "INSERT" | "MODIFY") {
        return None;
    }
    let change = &record.change;
    let id = request_id_of_key(string(&change.keys, "pk")?, string(&change.keys, "sk")?)?;
    let now = string(&change.new_image, "terminal").is_some();
    let before = string(&change.old_image, "terminal").is_some();
    (now && !before).then_some(id)
}

/// The request whose webhook this record makes due: one that became
/// terminal and has a webhook URL.
pub fn owes_webhook(record: &EventRecord) -> Option<Uuid> {
    became_terminal(record).filter(|_| string(&record.change.new_image, "webhook_url").is_some())
}

/// Queues the first webhook attempt of every record that owes one, all
/// records at once. A record whose message could not be sent is reported
/// by its sequence number: Lambda retries the batch from the first such
/// record (the ones after it queue again; the deliver function's claim
/// makes that harmless), and the stream mapping's on-failure destination
/// keeps any record that runs out of retries.
pub async fn handle(scheduler: &dyn WebhookScheduler, event: Event) -> DynamoDbEventResponse {
    let results = join_all(event.records.iter().map(|record| async move {
        let Some(id) = owes_webhook(record) else {
            return Ok(());
        };
        scheduler
            .schedule(&notify::first_attempt(id))
            .await
            .map_err(|e| (id, e))
    }))
    .await;
    let mut response = DynamoDbEventResponse::default();
    for (record, result) in event.records.iter().zip(results) {
        let Err((id, e)) = result else {
            continue;
        };
        tracing::warn!(request_id = %id, error = %e, "cannot queue the webhook; the stream will retry it");
        match &record.change.sequence_number {
            Some(seq) => {
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(seq.clone());
                response.batch_item_failures.push(failure);
            }
            None => {
                tracing::error!(request_id = %id, "the record has no sequence number to report")
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Event {
        serde_json::from_str(include_str!("../../../../infra/events/notify.json")).unwrap()
    }

    #[test]
    fn a_request_item_that_became_terminal_is_picked() {
        let event = fixture();
        let id =
            became_terminal(&event.records[0]).expect("the fixture shows a terminal transition");
        assert_eq!(id.to_string(), "0f8fad5b-d9cb-469f-a165-70867728950e");
    }

    #[test]
    fn other_changes_are_not() {
        let event = fixture();
        // Already terminal before: a webhook attempt being recorded.
        let mut later = event.records[0].clone();
        later.change.old_image = later.change.new_image.clone();
        assert_eq!(became_terminal(&later), None);
        // A product or image item.
        let mut image = event.records[0].clone();
        image
            .change
            .keys
            .inner_mut()
            .insert("sk".into(), AttributeValue::S("P#000000#I#00001".into()));
        assert_eq!(became_terminal(&image), None);
        // A removal (TTL).
        let mut removed = event.records[0].clone();
        removed.event_name = "REMOVE".into();
        assert_eq!(became_terminal(&removed), None);
    }

    #[test]
    fn only_a_request_with_a_webhook_owes_one() {
        let event = fixture();
        assert!(owes_webhook(&event.records[0]).is_some());
        let mut without = event.records[0].clone();
        without.change.new_image.inner_mut().remove("webhook_url");
        assert_eq!(became_terminal(&without), owes_webhook(&event.records[0]));
        assert_eq!(owes_webhook(&without), None);
    }
}
