#!/usr/bin/env bash
# Starts a moto server (infra/moto_serial_server.py) on 127.0.0.1 (unless one already answers there) and
# creates the table (stream + TTL), the image job and webhook queues with
# their dead-letter queues and the bucket described in infra/resources.json,
# and the secrets the functions read at cold start (their ARNs exported as
# API_TOKENS_SECRET_ARN, WEBHOOK_SECRET_ARN and REQUEST_ID_SECRET_ARN). Prints `export` lines for
# the environment the functions and tests read, so that
#   eval "$(infra/moto-up.sh)"
# points a shell at it. Stop it with infra/moto-down.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${MOTO_PORT:-5000}"
endpoint="http://127.0.0.1:${port}"
state_dir="${MOTO_STATE_DIR:-${TMPDIR:-/tmp}/imgproc-moto-${port}}"
mkdir -p "$state_dir"

ready() { curl -fsS -o /dev/null --max-time 2 "${endpoint}/moto-api/data.json"; }

if ! ready 2>/dev/null; then
  python="${MOTO_PYTHON:-python3}"
  if ! "$python" -c "import moto.server, werkzeug" 2>/dev/null; then
    echo "moto is not installed for $python: pip install -r requirements-dev.txt" >&2
    exit 1
  fi
  # moto's server, one request at a time (see moto_serial_server.py for why).
  # setsid: the server outlives this script, in its own process group.
  setsid "$python" "$here/moto_serial_server.py" 127.0.0.1 "$port" >"$state_dir/moto.log" 2>&1 < /dev/null &
  echo $! >"$state_dir/moto.pid"
  deadline=$((SECONDS + 30))
  until ready 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      echo "moto did not answer on ${endpoint} within 30 s; its log:" >&2
      cat "$state_dir/moto.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "moto started on ${endpoint} (pid $(cat "$state_dir/moto.pid"), log ${state_dir}/moto.log)" >&2
fi

AWS_ENDPOINT_URL="$endpoint" "${MOTO_PYTHON:-python3}" - "$here/resources.json" <<'PY'
import json, sys, os
import boto3

spec = json.load(open(sys.argv[1]))
region = spec["region"]
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=region,
          aws_access_key_id="testing", aws_secret_access_key="testing")

ddb = boto3.client("dynamodb", **kw)
t = spec["table"]
if t["name"] not in ddb.list_tables()["TableNames"]:
    ddb.create_table(
        TableName=t["name"],
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": t["partition_key"], "AttributeType": "S"},
                              {"AttributeName": t["sort_key"], "AttributeType": "S"}],
        KeySchema=[{"AttributeName": t["partition_key"], "KeyType": "HASH"},
                   {"AttributeName": t["sort_key"], "KeyType": "RANGE"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": t["stream_view_type"]},
    )
    ddb.get_waiter("table_exists").wait(TableName=t["name"])
    ddb.update_time_to_live(TableName=t["name"],
                            TimeToLiveSpecification={"Enabled": True, "AttributeName": t["ttl_attribute"]})

sqs = boto3.client("sqs", **kw)
q = spec["queue"]
dlq_url = sqs.create_queue(QueueName=q["dead_letter_queue"],
                           Attributes={"MessageRetentionPeriod": str(q["dlq_retention_seconds"])})["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
queue_url = sqs.create_queue(QueueName=q["name"], Attributes={
    "VisibilityTimeout": str(q["visibility_timeout_seconds"]),
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(q["max_receive_count"])}),
})["QueueUrl"]

w = spec["webhook_queue"]
webhook_dlq_url = sqs.create_queue(QueueName=w["dead_letter_queue"],
                                   Attributes={"MessageRetentionPeriod": str(w["dlq_retention_seconds"])})["QueueUrl"]
webhook_dlq_arn = sqs.get_queue_attributes(QueueUrl=webhook_dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
webhook_queue_url = sqs.create_queue(QueueName=w["name"], Attributes={
    "VisibilityTimeout": str(w["visibility_timeout_seconds"]),
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": webhook_dlq_arn, "maxReceiveCount": str(w["max_receive_count"])}),
})["QueueUrl"]

s3 = boto3.client("s3", **kw)
b = spec["bucket"]["name"]
if b not in [x["Name"] for x in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=b)

# The secrets the functions read at cold start (<NAME>_SECRET_ARN), as the
# template keeps them. The API client is the one of infra/events/upload.json.
sm = boto3.client("secretsmanager", **kw)
secret_arns = {}
for var, name, value in [
    ("API_TOKENS_SECRET_ARN", "imgproc-api-tokens", "fixture:fixture-token-0123456789abcdef0123456789abcdef"),
    ("WEBHOOK_SECRET_ARN", "imgproc-webhook-secret", "webhook-secret-for-moto"),
    ("REQUEST_ID_SECRET_ARN", "imgproc-request-id-secret", "request-id-secret-for-moto-0123456789abcdef"),
]:
    try:
        secret_arns[var] = sm.create_secret(Name=name, SecretString=value)["ARN"]
    except sm.exceptions.ResourceExistsException:
        secret_arns[var] = sm.describe_secret(SecretId=name)["ARN"]

stream_arn = ddb.describe_table(TableName=t["name"])["Table"]["LatestStreamArn"]
for k, v in [("AWS_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"]), ("MOTO_ENDPOINT", os.environ["AWS_ENDPOINT_URL"]),
             ("AWS_REGION", region), ("AWS_DEFAULT_REGION", region),
             ("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
             ("TABLE_NAME", t["name"]), ("TABLE_STREAM_ARN", stream_arn),
             ("QUEUE_URL", queue_url), ("DLQ_URL", dlq_url), ("BUCKET", b),
             ("WEBHOOK_QUEUE_URL", webhook_queue_url), ("WEBHOOK_DLQ_URL", webhook_dlq_url),
             # Output URLs are {PUBLIC_URL}files/{key}; the functions need it to start.
             ("PUBLIC_URL", os.environ.get("PUBLIC_URL") or "http://127.0.0.1:3000/"),
             *secret_arns.items()]:
    print(f"export {k}='{v}'")
PY
