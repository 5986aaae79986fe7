#!/usr/bin/env python3
"""Cost per million images on AWS, and what 10 million images an hour takes.

Every input is a figure with a source (see COST.md):
  - engine speed and sizes: bench/engine-figures.json (written by the benchmark);
  - the process function's memory and batch size, the fan-out function's
    timeout: template.yaml;
  - the code's own constants (shard sizes, segment sizes, page size, SQS
    batches in flight, deadlines): read from the Rust sources;
  - AWS requests and DynamoDB units per image: counted from the code path,
    call by call, with item sizes computed from the attributes the code
    writes (COST.md cites each call);
  - log bytes per image: measured from the test runs (COST.md says how);
  - prices and service limits: AWS list prices and documented defaults for
    US East (N. Virginia), as of PRICES["as_of"].
What is assumed rather than measured is flagged and can be changed here.

    python3 scripts/cost_model.py                      # the tables of COST.md
    python3 scripts/cost_model.py --json               # every number, for other tools
    python3 scripts/cost_model.py --arm64-slowdown 1.2 --download-ms 500 --images-per-request 200
    python3 scripts/cost_model.py --update-doc         # rewrite the generated blocks of COST.md
    python3 scripts/cost_model.py --check-doc          # exit 1 if COST.md's blocks are stale

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

# AWS's documented limits, as known at the price-list date (COST.md, "One request").
LIMITS = {
    # One partition (and so one partition key) of a DynamoDB table.
    "dynamodb_partition_wcu": 1000,
    "dynamodb_partition_rcu": 3000,
    # Lambda's SQS event source mapping, standard queue: it starts with 5
    # concurrent batches, adds up to 300 a minute, and runs at most 1,000.
    "sqs_mapping_start": 5,
    "sqs_mapping_ramp_per_minute": 300,
    "sqs_mapping_max_concurrency": 1000,
    "lambda_account_concurrency": 1000,
}

# Lambda gives a function one vCPU's worth of CPU time per 1,769 MB.
MB_PER_VCPU = 1769

# DynamoDB capacity units: a write unit per 1 KB written, a strongly
# consistent read unit per 4 KB read (a Query sums its items first).
WRITE_UNIT = 1024
READ_UNIT = 4096
# Every item is stored with 100 bytes of overhead (storage only, not units).
ITEM_STORAGE_OVERHEAD = 100

# Measured: bytes written to CloudWatch Logs at RUST_LOG=info (COST.md, "Logs").
# Per image: the "image succeeded" JSON line without its timestamp (Lambda
# adds its own) and the image's EMF line.
LOG_BYTES_PER_IMAGE = {"log_lines": 332, "emf_lines": 622}
# Per request: the "request accepted" and "request finished" lines, a
# "webhook delivered" line (about 200 bytes, estimated), the
# request_accepted, request_completed and webhook_attempted EMF lines, and
# the fan-out's "fan-out finished" line (about 150 bytes, estimated).
LOG_BYTES_PER_REQUEST = 184 + 219 + 200 + 316 + 442 + 471 + 150
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
    # Characters of an image URL in the CSV (the rows document and the
    # results CSV carry them; no DynamoDB item does any more).
    "url_chars": 100,
    # Digits of a product's serial number (it is part of the output key
    # stored on each image's result item).
    "serial_digits": 8,
    # One SendMessageBatch of 10 jobs, round trip, in the same region.
    "sqs_send_ms": 20.0,
    # The rest of one fan-out slice, one after the other: GetItem of the
    # request item, ranged S3 GetObject of the segment, UpdateItem of the cursor.
    "slice_overhead_ms": 40.0,
}

# The arm64 factors of the sensitivity line.
ARM64_SENSITIVITY = (1.0, 2.0)
# Request sizes of the "by request size" table.
REQUEST_SIZES = (10, 100, 500, 1000, 5000, 50000)
# DynamoDB units per image the design promises on the happy path, the
# per-host cap's download slots included.
WRU_BUDGET = 3
RRU_BUDGET = 1
# The image rate the design must sustain for one request (and its test's bound).
TARGET_IMAGES_PER_SECOND = 5000
BUDGET_TEST_IMAGES = 5000


def rust_const(rel: str, name: str) -> int:
    """An integer (or whole seconds of a Duration) constant of the Rust sources."""
    text = (REPO / rel).read_text()
    m = re.search(rf"\bconst {name}: [\w:]+ = (?:Duration::from_secs\()?([\d_]+)", text)
    if not m:
        sys.exit(f"{rel} has no constant {name}: update scripts/cost_model.py with the code")
    return int(m.group(1).replace("_", ""))


def config_default(field: str) -> int:
    """A default of `Config` (shared/src/config.rs), e.g. `max_images: 50_000,`."""
    text = (REPO / "shared/src/config.rs").read_text()
    m = re.search(rf"\n\s+{field}: ([\d_]+),", text)
    if not m:
        sys.exit(f"shared/src/config.rs has no default for {field}: update scripts/cost_model.py")
    return int(m.group(1).replace("_", ""))


def code_figures() -> dict:
    """The constants of the code that the counts below depend on."""
    return {
        "shard_max_size": rust_const("shared/src/domain/model.rs", "MAX_SIZE"),
        "shard_min_size": rust_const("shared/src/domain/model.rs", "MIN_SIZE"),
        "shard_target_count": rust_const("shared/src/domain/model.rs", "TARGET_COUNT"),
        "segment_images": rust_const("shared/src/domain/rows.rs", "SEGMENT_IMAGES"),
        "segment_products": rust_const("shared/src/domain/rows.rs", "SEGMENT_PRODUCTS"),
        "page_products": rust_const("shared/src/services/status.rs", "MAX_PAGE"),
        "sqs_batch": rust_const("shared/src/adapters/sqs.rs", "BATCH"),
        "sqs_batches_in_flight": rust_const("shared/src/adapters/sqs.rs", "BATCHES_IN_FLIGHT"),
        "fanout_slice_budget_s": rust_const("shared/src/services/fanout.rs", "SLICE_BUDGET"),
        "deadline_margin_s": rust_const("shared/src/lambda/handlers/batch.rs", "DEADLINE_MARGIN"),
        "max_images": config_default("max_images"),
        "max_concurrent_per_host": config_default("max_concurrent_per_host"),
    }


def function_block(text: str, name: str) -> str:
    block = re.search(rf"\n  {name}:\n(.*?)(?=\n  \w+:\n|\Z)", text, re.S)
    if not block:
        sys.exit(f"template.yaml has no {name}")
    return block.group(1)


def template_figures(path: Path) -> dict:
    """MemorySize and the SQS BatchSize of ProcessFunction, Timeout of FanOutFunction."""
    text = path.read_text()
    process = function_block(text, "ProcessFunction")
    memory = re.search(r"MemorySize:\s*(\d+)", process)
    batch = re.search(r"BatchSize:\s*(\d+)", process)
    if not memory or not batch:
        sys.exit("ProcessFunction in template.yaml needs MemorySize and BatchSize")
    timeout = re.search(r"Timeout:\s*(\d+)", function_block(text, "FanOutFunction"))
    if not timeout:
        sys.exit("FanOutFunction in template.yaml needs a Timeout")
    return {"memory_mb": int(memory.group(1)), "batch_size": int(batch.group(1)),
            "fanout_timeout_s": int(timeout.group(1))}


# --- item sizes, from the attributes adapters/dynamo.rs writes -------------------

def number_bytes(v: int) -> int:
    """DynamoDB's size of a number: 1 byte per two significant digits, plus 1."""
    digits = str(abs(int(v))).strip("0") or "0"
    return 1 + math.ceil(len(digits) / 2)


def item_bytes(attrs: dict) -> int:
    """Size of an item as DynamoDB counts it: names plus values."""
    size = 0
    for name, value in attrs.items():
        size += len(name.encode())
        if isinstance(value, bool):
            size += 1
        elif isinstance(value, int):
            size += number_bytes(value)
        elif isinstance(value, str):
            size += len(value.encode())
        elif isinstance(value, set):  # number set
            size += sum(number_bytes(v) for v in value)
        elif isinstance(value, list):  # list of strings: 3 bytes + 1 per element
            size += 3 + sum(1 + len(v.encode()) for v in value)
        else:
            raise TypeError(name)
    return size


UUID = "0" * 36
TIMESTAMP = "2026-01-01T00:00:00.000Z"
EPOCH = 1_767_225_611  # ten significant digits, as an expires_at or a lease


def image_item_bytes(engine: dict, a: dict) -> int:
    """A succeeded image's result item (`result_item`), under its shard's key."""
    return item_bytes({
        "pk": f"REQ#{UUID}#S00000", "sk": "I#0000", "status": "succeeded",
        "updated_at": TIMESTAMP, "expires_at": EPOCH,
        "output_key": f"processed/{UUID}/{'9' * a['serial_digits']}/1.jpg",
        "input_bytes": int(engine["mean_input_bytes"]), "output_bytes": int(engine["mean_output_bytes"]),
        "width": 3000, "height": 2000, "original_kept": False,
    })


def slot_item_bytes() -> int:
    """A download slot of the per-host cap (`adapters/dynamo/host_slots.rs`)."""
    return item_bytes({"pk": "HOST#" + "0" * 32, "sk": "SLOT#0000", "owner": UUID,
                       "lease_until": EPOCH * 1000, "origin": "https://images.example-shop.com",
                       "expires_at": EPOCH})


def counter_item_bytes(size: int) -> int:
    """A full shard's counter item (`count`): its images' offsets in a number set."""
    return item_bytes({"pk": f"REQ#{UUID}#S00000", "sk": "C", "ok": set(range(size)),
                       "expires_at": EPOCH})


def done_item_bytes(size: int) -> int:
    """A shard's done item (`shard_full`), under the request's key."""
    return item_bytes({"pk": f"REQ#{UUID}", "sk": "D#00000", "succeeded": size, "failed": 0,
                       "expires_at": EPOCH})


def row_bytes(position: int, a: dict) -> int:
    """One line of the rows document (`domain/rows.rs::Row`, JSON)."""
    k = a["images_per_product"]
    row = {"position": position, "serial_number": int("9" * a["serial_digits"]),
           "product_name": "Product name twenty", "first_ordinal": position * k,
           "urls": ["u" * a["url_chars"]] * k}
    return len(json.dumps(row, separators=(",", ":"))) + 1


def request_item_bytes(n: int, a: dict, code: dict) -> int:
    """The request item (`request_item`) at its largest: with the fan-out
    lease, the terminal state and the webhook state, and the rows index."""
    k = a["images_per_product"]
    products = math.ceil(n / k)
    per_segment = segment_products(k, code)
    index = ";".join(
        f"{p}:{p * row_bytes(p, a)}:{p * k}" for p in range(0, products, per_segment))
    return item_bytes({
        "pk": f"REQ#{UUID}", "sk": "A", "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
        "total": n, "queued": n, "fo_next": products, "product_count": products,
        "fingerprint": "f" * 64, "rows_key": f"requests/{UUID}/rows-{'f' * 16}.jsonl",
        "rows_len": products * row_bytes(products // 2, a), "rows_index": index, "warnings": [],
        "webhook_url": "https://hooks.example.com/imgproc/receiver-0001",
        "webhook_status": "delivered", "webhook_attempts": 1, "expires_at": EPOCH,
        "fo_owner": UUID, "fo_lease": EPOCH, "terminal": "completed",
        "completed_at": TIMESTAMP, "succeeded": n, "failed": 0,
    })


# --- the layout of a request -----------------------------------------------

def shards_of(n: int, code: dict) -> tuple:
    """`domain::Shards::of`: (images in the largest shard, shards). The code's
    shard size is clamped to [MIN_SIZE, MAX_SIZE]; a request of fewer images
    than MIN_SIZE is one shard holding all of them."""
    size = min(max(math.ceil(n / code["shard_target_count"]), code["shard_min_size"]),
               code["shard_max_size"])
    size = min(size, n)
    return size, math.ceil(n / size)


def segment_products(k: int, code: dict) -> int:
    """Products per segment of the rows document (`rows::encode`), k images each."""
    return max(1, min(code["segment_products"], code["segment_images"] // k))


def fanout_images_per_second(a: dict, code: dict) -> float:
    """One request's fan-out: one worker under a lease, one slice at a time,
    the slice's SendMessageBatch calls `sqs_batches_in_flight` at once."""
    per_slice = segment_products(a["images_per_product"], code) * a["images_per_product"]
    calls = per_slice / code["sqs_batch"]
    seconds = calls / code["sqs_batches_in_flight"] * a["sqs_send_ms"] / 1000 + a["slice_overhead_ms"] / 1000
    return per_slice / seconds


def per_request(n: int, engine: dict, a: dict, code: dict) -> dict:
    """Calls and units of one successful request of `n` images, on the happy
    path (every image succeeds on its first delivery), from the code path
    (COST.md, "Requests per image")."""
    k = a["images_per_product"]
    products = math.ceil(n / k)
    size, count = shards_of(n, code)
    slices = math.ceil(products / segment_products(k, code))
    # A fan-out run pauses SLICE_BUDGET before its deadline, which the
    # handler puts DEADLINE_MARGIN before the invocation's.
    run_s = a["fanout_timeout_s"] - code["fanout_slice_budget_s"] - code["deadline_margin_s"]
    runs = max(1, math.ceil(n / fanout_images_per_second(a, code) / run_s))

    req_bytes = request_item_bytes(n, a, code)
    req_wru = math.ceil(req_bytes / WRITE_UNIT)
    req_rru = math.ceil(req_bytes / READ_UNIT)
    img_bytes = image_item_bytes(engine, a)
    done_bytes = done_item_bytes(size)
    counter_bytes = counter_item_bytes(size)
    slot_bytes = slot_item_bytes()
    cap = code["max_concurrent_per_host"]
    batches = math.ceil(n / a["batch_size"])

    # Request item writes: upload PutItem; fan-out claim per run, cursor per
    # slice, lease release per paused run; terminal UpdateItem; webhook UpdateItems.
    request_item_writes = 1 + runs + slices + (runs - 1) + 1 + a["webhook_attempts_per_request"]
    # Writes, by item.
    writes = {
        # process: conditional PutItem of the result, UpdateItem ADD on the counter.
        "image result items": n * math.ceil(img_bytes / WRITE_UNIT),
        "shard counter items": n * math.ceil(counter_bytes / WRITE_UNIT),
        # the image that fills a shard: PutItem of its done item.
        "shard done items": count * math.ceil(done_bytes / WRITE_UNIT),
        "request item": req_wru * request_item_writes,
        # process: a conditional PutItem taking a slot of the host and a
        # conditional DeleteItem freeing it, once per batch
        # (services/kept_slots.rs: an instance keeps its slot for the batch;
        # a catalogue's images are on one host).
        "host slot items": 2 * batches * math.ceil(slot_bytes / WRITE_UNIT) if cap else 0,
    }

    # Reads (all strongly consistent), by call.
    # Each shard's completion queries the request's done items: at least the
    # ones finished before it, at most all of them.
    done_query_max = count * math.ceil(count * done_bytes / READ_UNIT)
    done_query_seq = sum(math.ceil(j * done_bytes / READ_UNIT) for j in range(1, count + 1))
    # Completion (services/results.rs, in the fan-out function, one run on
    # the happy path): a get_request (GetItem of the request item and an
    # eventually consistent Query of the done items), then the results CSV
    # in parts of `page_products` products; each part a GetItem of the
    # request item, a ranged S3 read and one Query per shard it touches.
    page_images = code["page_products"] * k
    pages = max(1, math.ceil(products / code["page_products"]))
    csv_queries = csv_rru = 0
    for p in range(pages):
        first, last = p * page_images, min(n, (p + 1) * page_images) - 1
        if first > last:
            continue
        for shard in range(first // size, last // size + 1):
            items = min(last, (shard + 1) * size - 1) - max(first, shard * size) + 1
            csv_queries += 1
            csv_rru += math.ceil(items * img_bytes / READ_UNIT)
    reads = {
        "shard done queries": done_query_max + math.ceil(count * done_bytes / READ_UNIT) / 2,
        "results CSV queries": csv_rru,
        # upload GetItem (absent: still a read); fan-out GetItem per slice and
        # one finding the end; completion's GetItem and one per results
        # part; notify GetItem.
        "request item": req_rru * (1 + slices + 1 + 1 + pages + 1),
        # process: an eventually consistent Query of the host's slots (half a
        # unit per 4 KB) before taking one, once per batch.
        "host slot queries": batches * math.ceil(cap * slot_bytes / READ_UNIT) / 2 if cap else 0,
    }
    return {
        "images": n,
        "shard_size": size,
        "shards": count,
        "slices": slices,
        "fanout_runs": runs,
        "bytes": {"request_item": req_bytes, "image_item": img_bytes,
                  "counter_item": counter_bytes, "done_item": done_bytes,
                  "slot_item": slot_bytes},
        "wru": writes,
        "rru": reads,
        "rru_done_queries_sequential": done_query_seq,
        "writes_per_item": {"shard counter item": size, "request item": request_item_writes,
                            "image result item": 1, "shard done item": 1},
        "calls": {
            "dynamodb_query": count + 1 + csv_queries,
            # upload SendMessage; fan-out: SendMessageBatch per 10 jobs, a
            # continuation per paused run, ReceiveMessage + DeleteMessage by
            # the fan-out mapping per run; process mapping: ReceiveMessage +
            # DeleteMessageBatch per batch; the completion message, received
            # and deleted by the fan-out mapping.
            "sqs": 1 + math.ceil(n / code["sqs_batch"]) + (runs - 1) + 2 * runs
            + 2 * n / a["batch_size"] + 3,
            # outputs; rows document; results CSV parts and the whole.
            "s3_put": n + 1 + pages + 1,
            # fan-out ranged read per slice; per results part a ranged read
            # of the rows and a GET finding the part not stored yet.
            "s3_get": slices + 2 * pages,
            # process per batch; upload, fan-out runs, completion, notify.
            "lambda": n / a["batch_size"] + 1 + runs + 1 + 1,
        },
    }


def per_image(r: dict) -> dict:
    n = r["images"]
    return {
        "dynamodb_wru": sum(r["wru"].values()) / n,
        "dynamodb_rru": sum(r["rru"].values()) / n,
        "wru_by_item": {k: v / n for k, v in r["wru"].items()},
        "rru_by_call": {k: v / n for k, v in r["rru"].items()},
        "sqs_requests": r["calls"]["sqs"] / n,
        "s3_puts": r["calls"]["s3_put"] / n,
        "s3_gets": r["calls"]["s3_get"] / n,
        "lambda_invocations": r["calls"]["lambda"] / n,
    }


def budget_holds_from(engine: dict, a: dict, code: dict) -> int:
    """The smallest request size from which every larger one stays within
    the budget of WRU_BUDGET and RRU_BUDGET per image ("at most" reads):
    every size up to 1,000 images is checked, then every 250th."""
    sizes = list(range(1, 1001)) + list(range(1250, code["max_images"] + 1, 250))
    last_over = 0
    for n in sizes:
        c = per_image(per_request(n, engine, a, code))
        if c["dynamodb_wru"] > WRU_BUDGET or c["dynamodb_rru"] > RRU_BUDGET:
            last_over = n
    return last_over + 1


def ceiling_of_one_request(engine: dict, a: dict, code: dict, billed_s: float) -> dict:
    """What bounds one request of the largest size the service accepts
    (COST.md, "One request"), and the 5,000-image test's write budget."""
    n = code["max_images"]
    r = per_request(n, engine, a, code)
    size, count = r["shard_size"], r["shards"]
    target = TARGET_IMAGES_PER_SECOND
    # Share of the request that falls in its busiest second at the target rate.
    second = min(1.0, target / n)
    mapping_ceiling = LIMITS["sqs_mapping_max_concurrency"] / billed_s
    fanout_rate = fanout_images_per_second(a, code)
    # An image writes its result and its counter (2 WRU) under its shard's key.
    shard_key_ceiling = LIMITS["dynamodb_partition_wcu"] / 2 * count
    ramp = LIMITS["sqs_mapping_ramp_per_minute"] / 60
    start = LIMITS["sqs_mapping_start"]
    # Concurrency c(t) = start + ramp t from an idle queue; images done = ∫ c / billed_s dt.
    from_idle_s = (-start + math.sqrt(start ** 2 + 2 * ramp * n * billed_s)) / ramp
    request_key_wru = r["wru"]["shard done items"] + r["wru"]["request item"]
    request_key_rru = r["rru"]["shard done queries"] + r["rru"]["request item"]
    # Over every request size: the most the request's own key takes in one second.
    worst_rcu = worst_wcu = 0.0
    for m in range(1, n + 1, max(1, n // 500)):
        q = per_request(m, engine, a, code)
        share = min(1.0, target / m)
        worst_rcu = max(worst_rcu, (q["rru"]["shard done queries"] + q["rru"]["request item"]) * share)
        worst_wcu = max(worst_wcu, (q["wru"]["shard done items"] + q["wru"]["request item"]) * share)
    budget = per_request(BUDGET_TEST_IMAGES, engine, a, code)
    w = budget["writes_per_item"]
    return {
        "images": n,
        "shard_size": size,
        "shards": count,
        "target_images_per_second": target,
        "process_concurrency_at_target": target * billed_s,
        "mapping_ceiling_images_per_second": mapping_ceiling,
        "mapping_ramp_seconds_to_target": max(0.0, (target * billed_s - start) / ramp),
        "seconds_from_idle": from_idle_s,
        "fanout_images_per_second": fanout_rate,
        "fanout_seconds": n / fanout_rate,
        "shard_key_ceiling_images_per_second": shard_key_ceiling,
        "ceiling_images_per_second": min(mapping_ceiling, fanout_rate, shard_key_ceiling),
        # Per partition key, at the target rate.
        "shard_key_wcu_per_second_spread": 2 * target / count,
        "shard_key_wcu_per_second_queue_order": 2 * size / (billed_s * a["batch_size"]),
        "request_key_wcu_per_second": request_key_wru * second,
        "request_key_rcu_per_second": request_key_rru * second,
        "request_key_worst_wcu_in_a_second": worst_wcu,
        "request_key_worst_rcu_in_a_second": worst_rcu,
        "budget_test": {
            "images": BUDGET_TEST_IMAGES, "shard_size": budget["shard_size"], "shards": budget["shards"],
            "counter_item_writes": w["shard counter item"],
            "request_item_writes": w["request item"],
            "write_calls_per_image": (w["shard counter item"] * budget["shards"] + w["request item"]
                                      + w["image result item"] * BUDGET_TEST_IMAGES
                                      + w["shard done item"] * budget["shards"]) / BUDGET_TEST_IMAGES,
        },
    }


def model(engine: dict, a: dict, code: dict, full: bool = True) -> dict:
    """Every figure of COST.md; `full=False` leaves out the tables by request
    size and the one-request section (for the sensitivity line)."""
    n = a["images_per_request"]
    request = per_request(n, engine, a, code)
    counts = per_image(request)
    memory_gb = a["memory_mb"] / 1024
    vcpus = a["memory_mb"] / MB_PER_VCPU
    cpu_s = a["arm64_slowdown"] / engine["images_per_second_1_thread"]
    # A batch's images run concurrently: compression is CPU-bound (one vCPU
    # at 1,769 MB); downloads and stores of the others overlap with it, and
    # only the batch's first download is waited for with the CPU idle.
    billed_s = cpu_s / min(vcpus, 1.0) + (a["download_ms"] + a["store_ms"]) / 1000 / a["batch_size"]
    log_bytes = (sum(LOG_BYTES_PER_IMAGE.values()) + LOG_BYTES_PER_REQUEST / n
                 + LAMBDA_PLATFORM_LOG_BYTES * counts["lambda_invocations"])
    p = PRICES
    million = 1e6
    costs = {
        "Lambda compute (process, arm64)": billed_s * memory_gb * p["lambda_arm64_gb_second"] * million,
        "Lambda requests": counts["lambda_invocations"] * p["lambda_request"] * million,
        "DynamoDB writes": counts["dynamodb_wru"] * p["dynamodb_write_request_unit"] * million,
        "DynamoDB reads": counts["dynamodb_rru"] * p["dynamodb_read_request_unit"] * million,
        "S3 PUT requests": counts["s3_puts"] * p["s3_put_request"] * million,
        "S3 GET requests": counts["s3_gets"] * p["s3_get_request"] * million,
        "SQS requests": counts["sqs_requests"] * p["sqs_request"] * million,
        "CloudWatch Logs ingestion": log_bytes / 1e9 * p["cloudwatch_logs_ingest_gb"] * million,
    }
    b = request["bytes"]
    out_gb_per_million = engine["mean_output_bytes"] * million / 1e9
    # The rows document and the results CSV (estimated): a row's share, the
    # input URL again and ~80 characters of output URL per image.
    docs_bytes_per_image = (row_bytes(n // 2, a) / a["images_per_product"]) + a["url_chars"] + 80
    item_bytes_per_image = (b["image_item"] + ITEM_STORAGE_OVERHEAD
                            + (b["counter_item"] + b["done_item"] + 2 * ITEM_STORAGE_OVERHEAD) / request["shard_size"]
                            + (b["request_item"] + ITEM_STORAGE_OVERHEAD) / n)
    monthly = {
        "S3 storage of the outputs": out_gb_per_million * p["s3_storage_gb_month"],
        "S3 storage of rows documents and results CSVs": docs_bytes_per_image * million / 1e9 * p["s3_storage_gb_month"],
        "DynamoDB storage + PITR (until TTL)": item_bytes_per_image * million / 1e9
        * (p["dynamodb_storage_gb_month"] + p["dynamodb_pitr_gb_month"]),
    }
    egress = out_gb_per_million * p["data_transfer_out_gb"] + million * p["s3_get_request"]

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
        "in_flight_messages": rate * billed_s * a["batch_size"],
    }

    base = {
        "inputs": {**a, "engine": engine, "code": code, "vcpus": vcpus, "cpu_seconds_per_image": cpu_s,
                   "billed_seconds_per_image": billed_s, "log_bytes_per_image": log_bytes},
        "request": request,
        "counts_per_image": counts,
        "usd_per_million_images": costs,
        "usd_per_million_images_total": sum(costs.values()),
        "usd_per_month_per_million_images_kept": monthly,
        "usd_per_million_outputs_downloaded_once": egress,
        "scale_10m_per_hour": scale,
        "limits": LIMITS,
        "prices": p,
    }
    if not full:
        return base

    by_size = []
    for size in REQUEST_SIZES:
        r = per_request(size, engine, a, code)
        c = per_image(r)
        hottest = max(r["writes_per_item"]["shard counter item"], r["writes_per_item"]["request item"])
        by_size.append({
            "images": size, "shard_size": r["shard_size"], "shards": r["shards"],
            "wru": c["dynamodb_wru"], "rru": c["dynamodb_rru"],
            "rru_typical": c["dynamodb_rru"] - (r["rru"]["shard done queries"] - r["rru_done_queries_sequential"]) / size,
            "hottest_item_writes": hottest,
            "usd_dynamodb_per_million": (c["dynamodb_wru"] * p["dynamodb_write_request_unit"]
                                         + c["dynamodb_rru"] * p["dynamodb_read_request_unit"]) * million,
        })

    one_request = ceiling_of_one_request(engine, a, code, billed_s)

    budget_from = budget_holds_from(engine, a, code)
    return {
        **base,
        "budget_holds_from_images": budget_from,
        "by_request_size": by_size,
        "one_request": one_request,
    }


def sections(m: dict) -> dict:
    """The generated blocks of COST.md, by name."""
    i, c, s, r, o = m["inputs"], m["counts_per_image"], m["scale_10m_per_hour"], m["request"], m["one_request"]
    e = i["engine"]
    n = r["images"]
    cost = [
        f"Engine: {e['images_per_second_1_thread']} images/s on one thread of {e['machine']} "
        f"(measured {e['measured_at']}, {e['corpus_images']} images, mean {e['mean_megapixels']} MP, "
        f"{e['mean_input_bytes'] / 1e3:.0f} KB in, {e['mean_output_bytes'] / 1e3:.0f} KB out). "
        f"Process function: {i['memory_mb']} MB ({i['vcpus']:.2f} vCPU), batches of {i['batch_size']}. "
        f"Assumed: arm64 {i['arm64_slowdown']}x slower per image, downloads {i['download_ms']:.0f} ms, "
        f"{n:,} images per request, {i['images_per_product']} per product "
        f"({r['shards']} shards of {r['shard_size']}, {r['slices']} fan-out slices). "
        f"Billed time per image: {i['billed_seconds_per_image'] * 1000:.0f} ms. Prices: {m['prices']['as_of']}.",
        "",
        "| per million images | USD |",
        "|---|---:|",
    ]
    for name, usd in m["usd_per_million_images"].items():
        cost.append(f"| {name} | {usd:,.2f} |")
    cost.append(f"| **Total** | **{m['usd_per_million_images_total']:,.2f}** |")
    cost += ["", "| per million images kept, per month | USD |", "|---|---:|"]
    for name, usd in m["usd_per_month_per_million_images_kept"].items():
        cost.append(f"| {name} | {usd:,.2f} |")
    cost += ["", f"Downloads by customers, if every output is fetched once over the internet (S3 GET + transfer out): "
             f"{m['usd_per_million_outputs_downloaded_once']:,.2f} USD per million images."]
    sens = m["arm64_sensitivity"]
    cost += ["", "; ".join(
        f"at `--arm64-slowdown {x['arm64_slowdown']}` the compute line is {x['compute']:,.2f} and the total {x['total']:,.2f}"
        for x in sens).capitalize() + " USD per million images."]

    w, rd = c["wru_by_item"], c["rru_by_call"]
    b = r["bytes"]
    counts = [
        f"Item sizes as DynamoDB counts them (names + values), computed from the attributes the code writes: "
        f"image result {b['image_item']} B, full shard counter {b['counter_item']} B, shard done {b['done_item']} B, "
        f"request item {b['request_item']} B (at {n:,} images), download slot {b['slot_item']} B.",
        "",
        "| per image, request of " + f"{n:,} images | count |",
        "|---|---:|",
        f"| **DynamoDB write request units** | **{c['dynamodb_wru']:.3f}** |",
        f"| … image result item (conditional `PutItem`) | {w['image result items']:.3f} |",
        f"| … shard counter item (`UpdateItem ADD`) | {w['shard counter items']:.3f} |",
        f"| … shard done items (`PutItem`, one per shard) | {w['shard done items']:.3f} |",
        f"| … request item (upload, fan-out, completion, webhook) | {w['request item']:.3f} |",
        f"| … host slot item (conditional `PutItem` to take, `DeleteItem` to free, once per batch; "
        f"`MAX_CONCURRENT_PER_HOST`={i['code']['max_concurrent_per_host']}) | {w['host slot items']:.3f} |",
        f"| **DynamoDB read request units** | **{c['dynamodb_rru']:.3f}** |",
        f"| … shard done `Query`s, at most (one per shard) | {rd['shard done queries']:.3f} |",
        f"| … results CSV `Query`s (one per shard and page) | {rd['results CSV queries']:.3f} |",
        f"| … request item `GetItem`s | {rd['request item']:.3f} |",
        f"| … host slot `Query` (eventually consistent, once per batch) | {rd['host slot queries']:.3f} |",
        f"| SQS requests | {c['sqs_requests']:.3f} |",
        f"| S3 PUTs | {c['s3_puts']:.3f} |",
        f"| S3 GETs | {c['s3_gets']:.4f} |",
        f"| Lambda invocations | {c['lambda_invocations']:.3f} |",
        f"| CloudWatch Logs bytes | {i['log_bytes_per_image']:.0f} |",
        "",
        "| images in the request | shards | WRU per image | RRU per image (at most; typical) | most writes to one item | DynamoDB USD per million images |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in m["by_request_size"]:
        counts.append(
            f"| {row['images']:,} | {row['shards']} × {row['shard_size']} | {row['wru']:.2f} | "
            f"{row['rru']:.2f}; {row['rru_typical']:.2f} | {row['hottest_item_writes']} "
            f"({100 * row['hottest_item_writes'] / row['images']:.1f} %) | {row['usd_dynamodb_per_million']:,.2f} |")
    counts += ["", f"Within {WRU_BUDGET} WRU and {RRU_BUDGET} RRU (at most) per image: every request of "
               f"{m['budget_holds_from_images']:,} images or more "
               f"(every size up to 1,000 checked, then every 250th up to {i['code']['max_images']:,})."]

    scale = [
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
    ]

    t = o["budget_test"]
    lim = m["limits"]
    target = f"{o['target_images_per_second']:,}"
    one = [
        f"| one request of {o['images']:,} images (the most `MAX_IMAGES` allows by default): "
        f"{o['shards']} shards of {o['shard_size']} | images/s |",
        "|---|---:|",
        f"| process mapping: {lim['sqs_mapping_max_concurrency']:,} batches at once × "
        f"{i['batch_size']} images ÷ {i['billed_seconds_per_image'] * i['batch_size']:.2f} s a batch | "
        f"{o['mapping_ceiling_images_per_second']:,.0f} |",
        f"| fan-out: one worker per request, a slice of {i['code']['segment_images']} jobs at a time, "
        f"{i['code']['sqs_batches_in_flight']} `SendMessageBatch` in flight (assumed {i['sqs_send_ms']:.0f} ms each, "
        f"{i['slice_overhead_ms']:.0f} ms per slice besides) | {o['fanout_images_per_second']:,.0f} |",
        f"| shard partition keys: {lim['dynamodb_partition_wcu']:,} WCU/s each ÷ 2 WRU per image × "
        f"{o['shards']} shards | {o['shard_key_ceiling_images_per_second']:,.0f} |",
        f"| **ceiling of one request** (the least of the three) | **{o['ceiling_images_per_second']:,.0f}** |",
        "",
        f"| at {target} images/s | needs |",
        "|---|---:|",
        f"| process function concurrency | {o['process_concurrency_at_target']:,.0f} |",
        f"| WCU/s on one shard's key, spread evenly over the shards | {o['shard_key_wcu_per_second_spread']:,.0f} |",
        f"| WCU/s on one shard's key, in queue order (a shard's {o['shard_size']} images finishing "
        f"within one batch's {i['billed_seconds_per_image'] * i['batch_size']:.1f} s) | "
        f"{o['shard_key_wcu_per_second_queue_order']:,.0f} |",
        f"| WCU/s and RCU/s on the request's own key (request item, done items and their `Query`s) | "
        f"{o['request_key_wcu_per_second']:,.0f}; {o['request_key_rcu_per_second']:,.0f} |",
        f"| the same, at most, in the busiest second of a request of any size | "
        f"{o['request_key_worst_wcu_in_a_second']:,.0f}; {o['request_key_worst_rcu_in_a_second']:,.0f} |",
        f"| seconds for the process mapping to ramp from idle to {target} images/s "
        f"(+{lim['sqs_mapping_ramp_per_minute']} concurrent a minute) | {o['mapping_ramp_seconds_to_target']:,.0f} |",
        f"| seconds for this request alone on an idle queue, ramp included | {o['seconds_from_idle']:,.0f} |",
        f"| seconds to queue its jobs (fan-out) | {o['fanout_seconds']:,.1f} |",
        "",
        f"The {t['images']:,}-image test (`five_thousand_images_write_no_item_more_than_one_percent_of_them`): "
        f"{t['shards']} shards of {t['shard_size']}; the busiest items are the shard counters, "
        f"{t['counter_item_writes']} writes each ({100 * t['counter_item_writes'] / t['images']:.1f} % of the images, "
        f"under the 1 % bound of {t['images'] // 100}); the request item takes {t['request_item_writes']}; "
        f"{t['write_calls_per_image']:.3f} write calls per image (the test allows 2.1). "
        f"At {target} images/s that request lasts a second, so no item takes more than "
        f"{t['counter_item_writes']} writes in any second, against {lim['dynamodb_partition_wcu']:,} WCU/s per partition.",
    ]

    return {"cost": "\n".join(cost), "counts": "\n".join(counts), "scale": "\n".join(scale),
            "one-request": "\n".join(one)}


def markdown(m: dict) -> str:
    return "\n\n".join(sections(m).values())


BLOCK = re.compile(r"(<!-- cost_model:([\w-]+) -->\n)(.*?)(<!-- /cost_model:\2 -->)", re.S)


def update_doc(text: str, blocks: dict) -> str:
    """`text` with each generated block between its markers replaced by `blocks`."""
    found = [m.group(2) for m in BLOCK.finditer(text)]
    if sorted(found) != sorted(blocks):
        sys.exit(f"COST.md must hold each generated block once between markers: "
                 f"it has {found}, the model writes {list(blocks)}")
    return BLOCK.sub(lambda m: m.group(1) + blocks[m.group(2)] + "\n" + m.group(4), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=Path, default=REPO / "bench/engine-figures.json")
    parser.add_argument("--template", type=Path, default=REPO / "template.yaml")
    parser.add_argument("--json", action="store_true", help="print every number as JSON")
    parser.add_argument("--doc", type=Path, default=REPO / "COST.md")
    parser.add_argument("--update-doc", action="store_true",
                        help="rewrite the generated blocks of --doc (with the default assumptions)")
    parser.add_argument("--check-doc", action="store_true",
                        help="exit 1 if the generated blocks of --doc differ from this model")
    for name, value in DEFAULTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args()
    engine = json.loads(args.figures.read_text())
    for key in ("images_per_second_1_thread", "mean_input_bytes", "mean_output_bytes"):
        if not isinstance(engine.get(key), (int, float)) or engine[key] <= 0:
            sys.exit(f"{args.figures}: {key} must be a positive number")
    assumptions = {name: getattr(args, name) for name in DEFAULTS}
    for name in ("images_per_request", "images_per_product", "url_chars", "serial_digits"):
        if assumptions[name] < 1:
            sys.exit(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("arm64_slowdown", "sqs_send_ms", "slice_overhead_ms"):
        if not assumptions[name] > 0:
            sys.exit(f"--{name.replace('_', '-')} must be positive")
    if (args.update_doc or args.check_doc) and assumptions != DEFAULTS:
        sys.exit("COST.md shows the default assumptions: --update-doc and --check-doc take no others")
    inputs, code = {**assumptions, **template_figures(args.template)}, code_figures()
    m = model(engine, inputs, code)
    m["arm64_sensitivity"] = []
    for slowdown in ARM64_SENSITIVITY:
        alt = model(engine, {**inputs, "arm64_slowdown": slowdown}, code, full=False)
        m["arm64_sensitivity"].append({"arm64_slowdown": slowdown,
                                       "compute": alt["usd_per_million_images"]["Lambda compute (process, arm64)"],
                                       "total": alt["usd_per_million_images_total"]})
    if args.update_doc or args.check_doc:
        text = args.doc.read_text()
        new = update_doc(text, sections(m))
        if args.check_doc:
            if new != text:
                sys.exit(f"{args.doc} is stale: run python3 scripts/cost_model.py --update-doc")
            return
        args.doc.write_text(new)
        return
    print(json.dumps(m, indent=2) if args.json else markdown(m))


if __name__ == "__main__":
    main()
