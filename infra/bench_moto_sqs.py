"""Times SQS on a moto server as the image jobs use it: SendMessageBatch of
N messages into one queue (with a redrive policy, like ImageJobsQueue),
then ReceiveMessage of ten and DeleteMessageBatch until `--drain` messages
are consumed. Prints one JSON object.

    python3 infra/bench_moto_sqs.py --endpoint http://127.0.0.1:5015 --messages 20000
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import boto3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--drain", type=int, default=None, help="messages to receive and delete (default: all)")
    args = ap.parse_args()
    sqs = boto3.client(
        "sqs",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = f"bench-{uuid.uuid4().hex[:8]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": "360",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        },
    )["QueueUrl"]
    body = json.dumps({"request_id": str(uuid.uuid4()), "serial_number": 1, "index": 1, "url": "http://127.0.0.1/x.jpg"})

    # Seconds per tenth of the sends: flat when linear, growing when quadratic.
    tenths: list[float] = []
    tenth = max(10, args.messages // 10)
    sent = 0
    t0 = time.monotonic()
    mark = t0
    while sent < args.messages:
        n = min(10, args.messages - sent)
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body} for i in range(n)])
        sent += n
        if sent % tenth == 0 or sent == args.messages:
            now = time.monotonic()
            tenths.append(round(now - mark, 2))
            mark = now
    send_s = time.monotonic() - t0

    drain = args.messages if args.drain is None else min(args.drain, args.messages)
    consumed = 0
    t1 = time.monotonic()
    while consumed < drain:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(10, drain - consumed), WaitTimeSeconds=0).get(
            "Messages", []
        )
        if not got:
            break
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        )
        consumed += len(got)
    drain_s = time.monotonic() - t1
    print(
        json.dumps(
            {
                "messages": args.messages,
                "send_seconds": round(send_s, 2),
                "sends_per_second": round(args.messages / send_s, 1),
                "send_seconds_per_tenth": tenths,
                "drained": consumed,
                "drain_seconds": round(drain_s, 2),
                "drained_per_second": round(consumed / drain_s, 1) if drain_s else None,
            }
        )
    )


if __name__ == "__main__":
    main()
