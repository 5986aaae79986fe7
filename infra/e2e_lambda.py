"""One N-image request through the emulated stack (driven by scripts/e2e-lambda.sh).

Uploads a CSV of N loopback image URLs through the emulated API Gateway,
polls the status with a deadline until the request is terminal, and checks:
every image succeeded, the counts are exact, the output CSV has one output
URL per input URL, the bucket holds one results CSV, the webhook came
exactly once. Then counts, from the table's DynamoDB stream and nothing
else, the writes (INSERT and MODIFY records) per item.

Prints the figures, and a last line `E2E_RESULT {json}`; exits 1 on a
failed check.

    python3 infra/e2e_lambda.py --ready /tmp/emu/ready.json --images 5000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import ImageServer, WebhookReceiver  # noqa: E402

TERMINAL = {"completed", "completed_with_errors", "failed"}


class CheckFailed(Exception):
    pass


def check(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    # The stack's API client (e2e-lambda.sh passes its token in ApiTokens).
    token = os.environ.get("E2E_API_TOKEN")
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=body, method=method, headers={**auth, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_retrying(url: str, figures: dict[str, Any], timeout: float = 60, tries: int = 10) -> tuple[int, dict[str, str], bytes]:
    """GET, retried on a gateway 5xx: moto serves one request at a time, and a
    burst of work (the results CSV of a big request) can keep a read waiting
    past API Gateway's 29 s. Each retry is counted in the figures."""
    for attempt in range(tries):
        status, headers, body = http("GET", url, timeout=timeout)
        if status not in (500, 502, 503) or attempt == tries - 1:
            return status, headers, body
        figures["gateway_5xx_retried"] = figures.get("gateway_5xx_retried", 0) + 1
        print(f"   GET {url.split('/v1/')[-1]} answered {status}; retrying", flush=True)
        time.sleep(2.0)
    raise AssertionError("unreachable")


def make_csv(image_base: str, images: int, per_row: int, target_bytes: int | None) -> tuple[bytes, list[list[str]]]:
    """`images` distinct URLs, `per_row` to a product; padded so that the file is about `target_bytes`."""
    rows: list[list[str]] = []
    n = 0
    serial = 0
    while n < images:
        serial += 1
        k = min(per_row, images - n)
        rows.append([f"{image_base}/catalogue/p{serial:06d}/image-{i + 1}.jpg" for i in range(k)])
        n += k

    def render(pad: str) -> bytes:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["S. No.", "Product Name", "Input Image Urls"])
        for i, urls in enumerate(rows, 1):
            w.writerow([i, f"Product {i:06d}", ",".join(u + pad for u in urls)])
        return out.getvalue().encode()

    data = render("")
    if target_bytes and len(data) < target_bytes:
        # A query string on every URL brings the file to the size a real
        # catalogue's URLs (CDN paths, signatures) give it.
        extra = (target_bytes - len(data)) // images
        if extra > 3:
            pad = "?v=" + "x" * (extra - 3)
            data = render(pad)
            rows = [[u + pad for u in urls] for urls in rows]
    return data, rows


def stream_writes(aws: Any, stream_arn: str) -> tuple[Counter[tuple[str, str]], int]:
    """INSERT and MODIFY records per (pk, sk), read from TRIM_HORIZON to the end.

    moto records an UpdateItem that creates an item as two INSERTs in a row,
    the first of an item holding only its key; DynamoDB records one write,
    and so is it counted here.
    """
    writes: Counter[tuple[str, str]] = Counter()
    total = 0
    key_only_insert: tuple[str, str] | None = None
    desc = aws.describe_stream(StreamArn=stream_arn)["StreamDescription"]
    for shard in desc.get("Shards", []):
        it = aws.get_shard_iterator(StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it:
            page = aws.get_records(ShardIterator=it, Limit=1000)
            records = page.get("Records", [])
            if not records:
                break
            for r in records:
                total += 1
                if r.get("eventName") in ("INSERT", "MODIFY"):
                    keys = r["dynamodb"]["Keys"]
                    key = (str(next(iter(keys.get("pk", {}).values()), "?")), str(next(iter(keys.get("sk", {}).values()), "")))
                    if r["eventName"] == "INSERT" and key_only_insert == key:
                        writes[key] -= 1
                    writes[key] += 1
                    key_only_insert = key if r["eventName"] == "INSERT" and r["dynamodb"].get("NewImage") == keys else None
                else:
                    key_only_insert = None
            it = page.get("NextShardIterator")
    return writes, total


def drop(s3: Any, ddb: Any, bucket: str, table: str, body: bytes, webhook: str) -> str:
    """Puts the CSV under incoming/ and returns the ID of the request the ingest function makes of it.

    The ID is derived under a server secret, so it is found in the table:
    the run's moto holds no other request item.
    """
    key = f"incoming/e2e-{uuid.uuid4().hex}.csv"
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"webhook-url": webhook})
    end = time.monotonic() + 300
    while time.monotonic() < end:
        found = ddb.scan(TableName=table, FilterExpression="sk = :a", ExpressionAttributeValues={":a": {"S": "A"}}).get("Items", [])
        if found:
            check(len(found) == 1, f"{len(found)} request items in a table that should hold one")
            return found[0]["pk"]["S"].split("#", 1)[-1]
        rejected = s3.list_objects_v2(Bucket=bucket, Prefix=f"rejected/{key}").get("Contents", [])
        check(not rejected, f"the drop was rejected: {rejected}")
        time.sleep(2)
    raise CheckFailed("no request item 300 s after the drop")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready", required=True, help="the emulator's ready file")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-row", type=int, default=5)
    ap.add_argument("--csv-bytes", type=int, default=None, help="pad the CSV to about this size (default: 80 bytes per image, 4 MB at 50,000)")
    ap.add_argument("--deadline", type=float, default=1800, help="seconds the request may take to become terminal")
    ap.add_argument("--webhook-grace", type=float, default=10, help="seconds to wait for a second (wrong) webhook")
    ap.add_argument("--max-item-writes", type=int, default=None, help="fail when one item is written more often (default 1%% of the images; 0: only report)")
    ap.add_argument("--via", choices=["api", "s3"], default="api", help="submit through the HTTP API (default) or the S3 drop (incoming/)")
    args = ap.parse_args()

    ready = json.loads(Path(args.ready).read_text())
    api = ready["api_url"].rstrip("/")
    table = next(v for v in ready["resources"].values() if "StreamArn" in v)
    bucket = next(v["Ref"] for v in ready["resources"].values() if str(v.get("Arn", "")).startswith("arn:aws:s3:::"))

    import boto3

    kw = dict(endpoint_url=ready["endpoint"], region_name=ready["region"], aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", **kw)
    streams = boto3.client("dynamodbstreams", **kw)
    ddb = boto3.client("dynamodb", **kw)

    images_srv, hooks = ImageServer(), WebhookReceiver()
    figures: dict[str, Any] = {"images": args.images}
    try:
        target = args.csv_bytes if args.csv_bytes is not None else 80 * args.images
        body, rows = make_csv(images_srv.url, args.images, args.per_row, target)
        figures["csv_bytes"] = len(body)
        figures["products"] = len(rows)
        hook_path = f"/e2e/{uuid.uuid4().hex}"
        print(f"== submitting {args.images} images in {len(rows)} products ({len(body) / 1e6:.2f} MB CSV) via {args.via}", flush=True)
        t0 = time.monotonic()
        if args.via == "api":
            status, headers, answer = http(
                "POST",
                f"{api}/v1/requests?webhook_url={urllib.parse.quote(hooks.url + hook_path, safe='')}",
                body,
                {"Content-Type": "text/csv", "Idempotency-Key": uuid.uuid4().hex},
                timeout=120,
            )
            figures["upload_answer_s"] = round(time.monotonic() - t0, 2)
            print(f"   answered {status} in {figures['upload_answer_s']} s", flush=True)
            check(status == 202, f"upload answered {status}: {answer[:500]!r}"
                  + (" (API Gateway's 29 s integration timeout)" if status == 503 else ""))
            accepted = json.loads(answer)
            request_id = accepted["request_id"]
            check(accepted["images"] == args.images and accepted["products"] == len(rows), f"upload counted {accepted}")
        else:
            request_id = drop(s3, ddb, bucket, table["Ref"], body, hooks.url + hook_path)
            figures["submission_s"] = round(time.monotonic() - t0, 2)
            print(f"   request {request_id} stored after {figures['submission_s']} s", flush=True)

        print(f"== waiting for {request_id} (deadline {args.deadline:.0f} s)", flush=True)
        end = t0 + args.deadline
        last_print = 0.0
        doc: dict[str, Any] = {}
        while True:
            status, _, raw = get_retrying(f"{api}/v1/requests/{request_id}?limit=1", figures)
            check(status == 200, f"status answered {status}: {raw[:300]!r}")
            doc = json.loads(raw)
            p = doc["progress"]
            now = time.monotonic()
            if doc["status"] in TERMINAL:
                break
            if now - last_print >= 15:
                rate = (p["succeeded"] + p["failed"]) / max(now - t0, 1e-9)
                print(f"   {now - t0:6.0f} s  {doc['status']:<10} queued {p.get('queued', '?')} succeeded {p['succeeded']} failed {p['failed']} ({rate:.1f} images/s)", flush=True)
                last_print = now
            check(now < end, f"not terminal after {args.deadline:.0f} s: {doc['status']} {p}")
            # Each status answer is a Query of a page of items: moto's one
            # thread should spend its time on the request, not on the watcher.
            time.sleep(3.0)
        elapsed = time.monotonic() - t0
        p = doc["progress"]
        figures["terminal_after_s"] = round(elapsed, 1)
        figures["images_per_s"] = round(args.images / elapsed, 1)
        print(f"   {doc['status']} after {elapsed:.0f} s: {p}", flush=True)
        check(doc["status"] == "completed", f"status {doc['status']}, progress {p}")
        check(
            p["total"] == args.images and p["succeeded"] == args.images and p["failed"] == 0 and p["pending"] == 0,
            f"counts {p}",
        )

        # The output CSV: one output URL per input URL, in order.
        status, _, raw = get_retrying(f"{api}/v1/requests/{request_id}/output.csv", figures, timeout=120)
        check(status == 200, f"output.csv answered {status}: {raw[:300]!r}")
        out_rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
        check(out_rows[0][3].strip().lower() == "output image urls", f"output.csv header {out_rows[0]}")
        check(len(out_rows) - 1 == len(rows), f"output.csv has {len(out_rows) - 1} rows for {len(rows)} products")
        for want, got in zip(rows, out_rows[1:]):
            outputs = [u for u in got[3].split(",") if u.strip()]
            check([u.strip() for u in got[2].split(",") if u.strip()] == want, f"output.csv row {got[0]}: input URLs differ")
            check(len(outputs) == len(want), f"output.csv row {got[0]}: {len(outputs)} output URLs for {len(want)} inputs")
        # One results CSV; besides it only the parts it was assembled from
        # (results/{id}.parts/), which together are the same document.
        keys = sorted(o["Key"] for o in s3.get_paginator("list_objects_v2")
                      .paginate(Bucket=bucket, Prefix=f"results/{request_id}")
                      .search("Contents[]") if o)
        whole = f"results/{request_id}.csv"
        parts = [k for k in keys if k.startswith(f"results/{request_id}.parts/")]
        check(keys.count(whole) == 1 and len(keys) == 1 + len(parts),
              f"results objects for the request: {keys}")
        document = s3.get_object(Bucket=bucket, Key=whole)["Body"].read()
        check(document == raw, "output.csv differs from the stored results CSV")
        if parts:
            joined = b"".join(s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in parts)
            check(joined == document, f"the {len(parts)} stored parts do not make up the results CSV")
        figures["results_parts"] = len(parts)

        # Exactly one webhook.
        wait_end = time.monotonic() + 120
        while not hooks.accepted(hook_path) and time.monotonic() < wait_end:
            time.sleep(0.5)
        time.sleep(args.webhook_grace)
        delivered = hooks.accepted(hook_path)
        figures["webhooks"] = len(delivered)
        check(len(delivered) == 1, f"{len(delivered)} webhooks delivered (attempts: {len(hooks.attempts(hook_path))})")
        payload = delivered[0].json()
        check(payload.get("request_id") == request_id and payload.get("status") == "completed", f"webhook payload {payload}")
        check(payload.get("progress", {}).get("succeeded") == args.images, f"webhook progress {payload.get('progress')}")
        figures["image_downloads"] = images_srv.total_hits()

        # Writes per item, from the stream alone.
        writes, records = stream_writes(streams, table["StreamArn"])
        mine = {k: v for k, v in writes.items() if request_id in k[0] or request_id in k[1]}
        hottest = max(mine.items(), key=lambda kv: kv[1]) if mine else (("", ""), 0)
        figures["stream_records"] = records
        figures["items_written"] = len(mine)
        figures["writes_per_image"] = round(sum(mine.values()) / args.images, 2)
        figures["max_writes_one_item"] = hottest[1]
        figures["hottest_item"] = f"{hottest[0][0]} / {hottest[0][1]}"
        limit = args.max_item_writes if args.max_item_writes is not None else max(1, args.images // 100)
        figures["max_item_writes_allowed"] = limit or None
        print(
            f"== stream: {records} records; {len(mine)} items of the request written {sum(mine.values())} times "
            f"({figures['writes_per_image']} per image); most written: {hottest[0]} {hottest[1]} times",
            flush=True,
        )
        if limit:
            check(hottest[1] <= limit, f"item {hottest[0]} written {hottest[1]} times (> {limit}): a hot item")
    except CheckFailed as e:
        figures["failed"] = str(e)
        print(f"E2E FAILED: {e}", flush=True)
        print("E2E_RESULT " + json.dumps(figures), flush=True)
        return 1
    finally:
        images_srv.close()
        hooks.close()
    print("E2E_RESULT " + json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
