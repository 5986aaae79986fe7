//! `notify`: DynamoDB stream records of request items whose status became
//! terminal → the signed webhook. The template's filter already lets only
//! those through; the check is repeated here so that an unfiltered stream
//! (or a test feeding every record) behaves the same.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde_dynamo::AttributeValue;
use uuid::Uuid;

use crate::aws::dynamo::request_id_of_key;
use crate::services::{App, notify};

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

/// Delivers each terminal request's webhook in stream order. On a failure
/// it stops and reports that record: Lambda retries from there, and
/// `notify` resumes from the attempts already recorded.
pub async fn handle(app: &App, event: Event) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    for record in &event.records {
        let Some(id) = became_terminal(record) else {
            continue;
        };
        if let Err(e) = notify::notify(app, id).await {
            tracing::warn!(request_id = %id, error = %e, "notification failed; the stream will retry it");
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
            break;
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
}
