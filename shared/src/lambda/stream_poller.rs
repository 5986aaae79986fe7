//! Reads a table's DynamoDB stream and shapes the records as the Lambda
//! event the `notify` function receives — the part of Lambda's event
//! source mapping an emulator does not run. Stream records carry no
//! `eventSourceARN`; the mapping adds it, so this does too.

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::Event;
use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use serde_json::{Value, json};

use crate::adapters::port_error;
use crate::ports::{PortError, PortResult};

/// Every record of every shard of `stream_arn`, from the oldest kept.
pub async fn read_all(client: &Client, stream_arn: &str) -> PortResult<Vec<Record>> {
    let stream = client
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await
        .map_err(|e| port_error("DynamoDB Streams DescribeStream", e))?;
    let shards = stream
        .stream_description
        .and_then(|d| d.shards)
        .unwrap_or_default();
    let mut records = Vec::new();
    for shard in shards {
        let Some(shard_id) = shard.shard_id else {
            continue;
        };
        let mut iterator = client
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| port_error("DynamoDB Streams GetShardIterator", e))?
            .shard_iterator;
        // An open shard always returns a next iterator: stop at the first empty page.
        while let Some(it) = iterator.take() {
            let page = client
                .get_records()
                .shard_iterator(it)
                .send()
                .await
                .map_err(|e| port_error("DynamoDB Streams GetRecords", e))?;
            let batch = page.records.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            records.extend(batch);
            iterator = page.next_shard_iterator;
        }
    }
    Ok(records)
}

fn attribute(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::Ss(l) => json!({ "SS": l }),
        AttributeValue::Ns(l) => json!({ "NS": l }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(attribute).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": item(m) }),
        AttributeValue::B(b) => {
            json!({ "B": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b.as_ref()) })
        }
        AttributeValue::Bs(l) => {
            json!({ "BS": l.iter().map(|b| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b.as_ref())).collect::<Vec<_>>() })
        }
        _ => Value::Null,
    }
}

fn item(m: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), attribute(v))).collect())
}

/// The Lambda event for `records`, as the event source mapping of `stream_arn` would build it.
pub fn lambda_event(records: &[Record], stream_arn: &str) -> PortResult<Event> {
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            let d = r.dynamodb.as_ref();
            let mut change = json!({
                "Keys": d.and_then(|d| d.keys.as_ref()).map(item).unwrap_or(json!({})),
                "SequenceNumber": d.and_then(|d| d.sequence_number.clone()),
                "SizeBytes": d.and_then(|d| d.size_bytes).unwrap_or(0),
                "StreamViewType": d.and_then(|d| d.stream_view_type.as_ref()).map(|v| v.as_str().to_owned()),
            });
            if let Some(t) = d.and_then(|d| d.approximate_creation_date_time) {
                change["ApproximateCreationDateTime"] = json!(t.secs());
            }
            if let Some(image) = d.and_then(|d| d.new_image.as_ref()) {
                change["NewImage"] = item(image);
            }
            if let Some(image) = d.and_then(|d| d.old_image.as_ref()) {
                change["OldImage"] = item(image);
            }
            json!({
                "eventID": r.event_id,
                "eventName": r.event_name.as_ref().map(|n| n.as_str().to_owned()),
                "eventVersion": r.event_version,
                "eventSource": r.event_source.clone().unwrap_or_else(|| "aws:dynamodb".into()),
                "awsRegion": r.aws_region.clone().unwrap_or_default(),
                "dynamodb": change,
                "eventSourceARN": stream_arn,
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).map_err(|e| {
        PortError::Permanent(format!("stream records do not form a Lambda event: {e}"))
    })
}
