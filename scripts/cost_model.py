#!/usr/bin/env python3
"""Cost per million images on AWS, and what 10 million images an hour takes.

Every input is a figure with a source (see COST.md):
  - engine speed and sizes: bench/engine-figures.json (written by the benchmark);
  - the process function's memory and batch size: template.yaml;
  - AWS requests per image: counted from the code path (COST.md cites each call);
  - log bytes per image: measured from the test runs (COST.md says how);
  - prices: AWS list prices for US East (N. Virginia), as of PRICES["as_of"].
What is assumed rather than measured is flagged and can be changed here.

    python3 scripts/cost_model.py                      # the tables of COST.md
    python3 scripts/cost_model.py --json               # every number, for other tools
    python3 scripts/cost_model.py --arm64-slowdown 1.2 --download-ms 500 --images-per-request 200

Standard library only.
"""

import argparse
import json
import math
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# US East (N. Virginia) on-demand list prices, USD, as published on the
# providers' pricing pages at the date below (not checked live).
PRICES = {
    "as_of": "2025-06 (us-east-1 list prices)",
    "lambda_arm64_gb_second": 0.0000133334,  # first 7.5 billion GB-s a month
    "lambda_request": 0.20 / 1e6,
    "dynamodb_write_request_unit": 0.625 / 1e6,  # on-demand, since the Nov 2024 price cut
    "dynamodb_read_request_unit": 0.125 / 1e6,
    "dynamodb_storage_gb_month": 0.25,
    "dynamodb_pitr_gb_month": 0.20,
    "sqs_request": 0.40 / 1e6,  # standard queue, per 64 KB chunk
    "s3_put_request": 0.005 / 1000,
    "s3_get_request": 0.0004 / 1000,
    "s3_storage_gb_month": 0.023,
    "cloudwatch_logs_ingest_gb": 0.50,
    "cloudwatch_custom_metric_month": 0.30,
    "cloudwatch_alarm_month": 0.10,
    "cloudwatch_dashboard_month": 3.00,
    "data_transfer_out_gb": 0.09,  # to the internet, first 10 TB a month
}

# Lambda gives a function one vCPU's worth of CPU time per 1,769 MB.
MB_PER_VCPU = 1769

# Measured: bytes written to CloudWatch Logs at RUST_LOG=info (COST.md, "Logs").
# Per image: the "image succeeded" JSON line without its timestamp (Lambda
# adds its own) and the image's EMF line.
LOG_BYTES_PER_IMAGE = {"log_lines": 332, "emf_lines": 622}
# Per request: the "request accepted" and "request finished" lines, a
# "webhook delivered" line (about 200 bytes, estimated), and the
# request_accepted, request_completed and webhook_attempted EMF lines.
LOG_BYTES_PER_REQUEST = 184 + 219 + 200 + 316 + 442 + 471
# Lambda's own START / END / REPORT lines, per invocation (not measured here).
LAMBDA_PLATFORM_LOG_BYTES = 350

# Assumptions (not measured here): change them with the options below.
DEFAULTS = {
    # Single-thread time on Graviton2 (Lambda arm64) relative to the
    # benchmark machine: no arm64 machine was available to measure it.
    "arm64_slowdown": 1.5,
    # Wall time to download one image from the customer's server.
    "download_ms": 300.0,
    # S3 PutObject + DynamoDB calls of one image, wall time.
    "store_ms": 60.0,
    "images_per_request": 1000,
    "images_per_product": 2,
    "webhook_attempts_per_request": 1,
    # DynamoDB item sizes in KB (≤ 1 KB each with URLs of ~100 characters;
    # a 2,048-character URL makes an image item ~2.3 KB: 3 WRU per write).
    "image_item_kb": 0.4,
    "product_item_kb": 0.15,
}


def template_figures(path: Path) -> dict:
    """MemorySize and the SQS BatchSize of ProcessFunction in template.yaml."""
    text = path.read_text()
    block = re.search(r"\n  ProcessFunction:\n(.*?)(?=\n  \w+:\n|\Z)", text, re.S)
    if not block:
        sys.exit("template.yaml has no ProcessFunction")
    memory = re.search(r"MemorySize:\s*(\d+)", block.group(1))
    batch = re.search(r"BatchSize:\s*(\d+)", block.group(1))
    if not memory or not batch:
        sys.exit("ProcessFunction in template.yaml needs MemorySize and BatchSize")
    return {"memory_mb": int(memory.group(1)), "batch_size": int(batch.group(1))}


def per_image_counts(a: dict) -> dict:
    """AWS requests and capacity units per image, from the code path (COST.md, "Requests per image")."""
    n = a["images_per_request"]
    k = a["images_per_product"]
    batch = a["batch_size"]
    image_wru = math.ceil(a["image_item_kb"])
    # Once per request: claim PutItem, request PutItem (upload), terminal
    # UpdateItem (last image), one webhook UpdateItem per attempt (notify).
    per_request_wru = 1 + 1 + 1 + a["webhook_attempts_per_request"]
    # Once per request: GetItem (upload), GetItem + Query of every item
    # (results CSV), GetItem (notify). Strongly consistent: 1 RRU per 4 KB.
    query_rru = math.ceil((n * a["image_item_kb"] + n / k * a["product_item_kb"]) / 4)
    per_request_rru = 1 + 1 + query_rru + 1
    return {
        "dynamodb_wru": image_wru  # image item, BatchWriteItem (upload)
        + 1 / k  # product item, BatchWriteItem (upload)
        + 2 * image_wru + 2 * 1  # TransactWriteItems: image + request counter, 2 WRU per KB each
        + per_request_wru / n,
        "dynamodb_wru_transaction": 2 * image_wru + 2,
        "dynamodb_rru": 1 + 1 + per_request_rru / n,  # image status + progress GetItems
        "sqs_requests": 1 / 10 + 2 / batch,  # SendMessageBatch; ReceiveMessage + DeleteMessageBatch by Lambda
        "s3_puts": 1 + 1 / n,  # the image; the results CSV
        "lambda_invocations": 1 / batch + 2 / n,  # process; upload + notify
    }


def model(engine: dict, a: dict) -> dict:
    counts = per_image_counts(a)
    memory_gb = a["memory_mb"] / 1024
    vcpus = a["memory_mb"] / MB_PER_VCPU
    cpu_s = a["arm64_slowdown"] / engine["images_per_second_1_thread"]
    # A batch's images run concurrently: compression is CPU-bound (one vCPU
    # at 1,769 MB); downloads and stores of the others overlap with it, and
    # only the batch's first download is waited for with the CPU idle.
    billed_s = cpu_s / min(vcpus, 1.0) + (a["download_ms"] + a["store_ms"]) / 1000 / a["batch_size"]
    log_bytes = (sum(LOG_BYTES_PER_IMAGE.values()) + LOG_BYTES_PER_REQUEST / a["images_per_request"]
                 + LAMBDA_PLATFORM_LOG_BYTES / a["batch_size"])
    p = PRICES
    million = 1e6
    costs = {
        "Lambda compute (process, arm64)": billed_s * memory_gb * p["lambda_arm64_gb_second"] * million,
        "Lambda requests": counts["lambda_invocations"] * p["lambda_request"] * million,
        "DynamoDB writes": counts["dynamodb_wru"] * p["dynamodb_write_request_unit"] * million,
        "DynamoDB reads": counts["dynamodb_rru"] * p["dynamodb_read_request_unit"] * million,
        "S3 PUT requests": counts["s3_puts"] * p["s3_put_request"] * million,
        "SQS requests": counts["sqs_requests"] * p["sqs_request"] * million,
        "CloudWatch Logs ingestion": log_bytes / 1e9 * p["cloudwatch_logs_ingest_gb"] * million,
    }
    out_gb_per_million = engine["mean_output_bytes"] * million / 1e9
    item_gb_per_million = (a["image_item_kb"] + a["product_item_kb"] / a["images_per_product"]) * million / 1e6
    monthly = {
        "S3 storage of the outputs": out_gb_per_million * p["s3_storage_gb_month"],
        "DynamoDB storage + PITR (until TTL)": item_gb_per_million * (p["dynamodb_storage_gb_month"] + p["dynamodb_pitr_gb_month"]),
    }
    egress = out_gb_per_million * p["data_transfer_out_gb"] + million * p["s3_get_request"]

    # The batched-counter design: one TransactWriteItems per Lambda batch
    # (every image of the batch + one ADD on the counter) instead of one per image.
    batched_txn = 2 * math.ceil(a["image_item_kb"]) + 2 / a["batch_size"]
    saved_wru = counts["dynamodb_wru_transaction"] - batched_txn

    rate = 10e6 / 3600
    scale = {
        "images_per_second": rate,
        "process_concurrency": rate * billed_s,
        "dynamodb_wru_per_second": rate * counts["dynamodb_wru"],
        "dynamodb_rru_per_second": rate * counts["dynamodb_rru"],
        "sqs_requests_per_second": rate * counts["sqs_requests"],
        "s3_puts_per_second": rate * counts["s3_puts"],
        "lambda_invocations_per_second": rate * counts["lambda_invocations"],
        "download_gbit_per_second": rate * engine["mean_input_bytes"] * 8 / 1e9,
        "log_mb_per_second": rate * log_bytes / 1e6,
        # Every image's transaction writes the request item: 2 WRU (≤ 1 KB,
        # transactional) against DynamoDB's 1,000 WCU/s for one item.
        "max_images_per_second_per_request": 1000 / 2,
        "in_flight_messages": rate * billed_s * a["batch_size"],
    }
    return {
        "inputs": {**a, "engine": engine, "vcpus": vcpus, "cpu_seconds_per_image": cpu_s,
                   "billed_seconds_per_image": billed_s, "log_bytes_per_image": log_bytes},
        "counts_per_image": counts,
        "usd_per_million_images": costs,
        "usd_per_million_images_total": sum(costs.values()),
        "usd_per_month_per_million_images_kept": monthly,
        "usd_per_million_outputs_downloaded_once": egress,
        "batched_counter": {"wru_saved_per_image": saved_wru,
                            "usd_saved_per_million": saved_wru * p["dynamodb_write_request_unit"] * million},
        "scale_10m_per_hour": scale,
        "prices": p,
    }


def markdown(m: dict) -> str:
    i, c, s = m["inputs"], m["counts_per_image"], m["scale_10m_per_hour"]
    e = i["engine"]
    lines = [
        f"Engine: {e['images_per_second_1_thread']} images/s on one thread of {e['machine']} "
        f"(measured {e['measured_at']}, {e['corpus_images']} images, mean {e['mean_megapixels']} MP, "
        f"{e['mean_input_bytes'] / 1e3:.0f} KB in, {e['mean_output_bytes'] / 1e3:.0f} KB out). "
        f"Process function: {i['memory_mb']} MB ({i['vcpus']:.2f} vCPU), batches of {i['batch_size']}. "
        f"Assumed: arm64 {i['arm64_slowdown']}x slower per image, downloads {i['download_ms']:.0f} ms, "
        f"{i['images_per_request']} images per request, {i['images_per_product']} per product. "
        f"Billed time per image: {i['billed_seconds_per_image'] * 1000:.0f} ms. Prices: {m['prices']['as_of']}.",
        "",
        "| per million images | USD |",
        "|---|---:|",
    ]
    for name, usd in m["usd_per_million_images"].items():
        lines.append(f"| {name} | {usd:,.2f} |")
    lines.append(f"| **Total** | **{m['usd_per_million_images_total']:,.2f}** |")
    lines += ["", "| per million images kept, per month | USD |", "|---|---:|"]
    for name, usd in m["usd_per_month_per_million_images_kept"].items():
        lines.append(f"| {name} | {usd:,.2f} |")
    lines += ["", f"Downloads by customers, if every output is fetched once over the internet (S3 GET + transfer out): "
              f"{m['usd_per_million_outputs_downloaded_once']:,.2f} USD per million images."]
    lines += [
        "",
        "| per image | count |",
        "|---|---:|",
        f"| DynamoDB write request units | {c['dynamodb_wru']:.2f} (of which the finishing transaction: {c['dynamodb_wru_transaction']}) |",
        f"| DynamoDB read request units | {c['dynamodb_rru']:.2f} |",
        f"| SQS requests | {c['sqs_requests']:.2f} |",
        f"| S3 PUTs | {c['s3_puts']:.3f} |",
        f"| Lambda invocations | {c['lambda_invocations']:.3f} |",
        f"| CloudWatch Logs bytes | {i['log_bytes_per_image']:.0f} |",
        "",
        "| 10 million images an hour | needs |",
        "|---|---:|",
        f"| images/s | {s['images_per_second']:,.0f} |",
        f"| process function concurrency | {s['process_concurrency']:,.0f} |",
        f"| messages in flight | {s['in_flight_messages']:,.0f} |",
        f"| DynamoDB WRU/s | {s['dynamodb_wru_per_second']:,.0f} |",
        f"| DynamoDB RRU/s | {s['dynamodb_rru_per_second']:,.0f} |",
        f"| SQS requests/s | {s['sqs_requests_per_second']:,.0f} |",
        f"| S3 PUT/s | {s['s3_puts_per_second']:,.0f} |",
        f"| Lambda invocations/s | {s['lambda_invocations_per_second']:,.0f} |",
        f"| downloads from customers' servers, Gbit/s | {s['download_gbit_per_second']:,.1f} |",
        f"| CloudWatch Logs, MB/s | {s['log_mb_per_second']:,.1f} |",
        f"| ceiling of one request, images/s (its counter item) | {s['max_images_per_second_per_request']:,.0f} |",
        "",
        f"Batching the counter per Lambda batch would save {m['batched_counter']['wru_saved_per_image']:.1f} WRU "
        f"per image: {m['batched_counter']['usd_saved_per_million']:,.2f} USD per million images.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=Path, default=REPO / "bench/engine-figures.json")
    parser.add_argument("--template", type=Path, default=REPO / "template.yaml")
    parser.add_argument("--json", action="store_true", help="print every number as JSON")
    for name, value in DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args()
    engine = json.loads(args.figures.read_text())
    for key in ("images_per_second_1_thread", "mean_input_bytes", "mean_output_bytes"):
        if not isinstance(engine.get(key), (int, float)) or engine[key] <= 0:
            sys.exit(f"{args.figures}: {key} must be a positive number")
    assumptions = {name: getattr(args, name) for name in DEFAULTS}
    m = model(engine, {**assumptions, **template_figures(args.template)})
    print(json.dumps(m, indent=2) if args.json else markdown(m))


if __name__ == "__main__":
    main()
