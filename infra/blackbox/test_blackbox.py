"""Black-box cases against the AWS functions on moto: each drives only the
HTTP API, S3 and SQS (and the emulator's admin API, for what an operator
does in the Lambda console), and each ends by checking that the request
became terminal with exact counts and that exactly one webhook came."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest

from conftest import Client, needs_deadletter, needs_default_route, needs_fanout, wait_for

pytestmark = pytest.mark.timeout(900)


def image_errors(doc: dict[str, Any]) -> dict[str, str | None]:
    """input URL -> error code (None when it succeeded)."""
    return {
        img["input_url"]: (img["error"] or {}).get("code")
        for product in doc["products"]
        for img in product["images"]
    }


def assert_progress(doc: dict[str, Any], total: int, succeeded: int, failed: int) -> None:
    p = doc["progress"]
    assert (p["total"], p["succeeded"], p["failed"], p["pending"]) == (total, succeeded, failed, 0), p


@needs_fanout
def test_five_concurrent_uploads_with_one_idempotency_key(stack: Client):
    # Big enough that the first submission is still being stored when the others arrive.
    rows = [[stack.image(f"p{i}-{j}") for j in range(5)] for i in range(120)]
    body = stack.csv(rows)
    webhook, path = stack.hook()
    key = f"blackbox-{uuid.uuid4()}"
    answers: list[tuple[int, dict[str, str], Any]] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def upload() -> None:
        start.wait()
        got = stack.submit(body, webhook, key, timeout=90)
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=upload) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 5
    statuses = sorted(a[0] for a in answers)
    assert all(s in (202, 409) for s in statuses), f"answers {statuses}: a duplicate in flight got a 5xx or worse"
    accepted = [a[2] for a in answers if a[0] == 202]
    assert accepted, "no upload was accepted"
    assert all(a == accepted[0] for a in accepted), "the accepted answers differ"
    for status, headers, doc in answers:
        if status == 409:
            assert doc["error"]["code"] == "conflict"
            assert int(headers["retry-after"]) >= 1
    request_id = accepted[0]["request_id"]
    # A repeat after the fact gets the first answer.
    status, _, again = stack.submit(body, webhook, key)
    assert status == 202 and again == accepted[0]
    doc = stack.wait_terminal(request_id, timeout=900)
    assert doc["status"] == "completed"
    assert_progress(doc, 600, 600, 0)
    stack.one_webhook(path, request_id)


@needs_default_route
def test_a_path_no_route_matches_gets_the_spec_error_body(stack: Client):
    for method, path in (("GET", "/v1/requests/../etc"), ("GET", "/no/such/thing"), ("DELETE", "/v1/requests")):
        status, headers, raw = stack.http(method, path)
        assert status in (404, 405), (method, path, status)
        body = json.loads(raw)
        assert set(body) == {"error"}, body
        if status == 404:
            assert body["error"]["code"] == "not_found"
        assert body["error"]["code"] and body["error"]["message"]


def test_a_request_mixing_good_missing_and_non_image_urls(stack: Client):
    good = [stack.image(f"good{i}") for i in range(6)]
    missing = [stack.image(f"gone{i}", "missing/") for i in range(3)]
    html = [stack.image(f"page{i}", "text/") for i in range(2)]
    rows = [[good[0], missing[0], good[1]], [html[0]], [good[2], good[3], missing[1], html[1]], [missing[2], good[4], good[5]]]
    webhook, path = stack.hook()
    status, _, accepted = stack.submit(stack.csv(rows), webhook)
    assert status == 202, accepted
    request_id = accepted["request_id"]
    doc = stack.wait_terminal(request_id)
    assert doc["status"] == "completed_with_errors"
    assert_progress(doc, 11, 6, 5)
    errors = image_errors(doc)
    assert {errors[u] for u in good} == {None}
    assert {errors[u] for u in missing} == {"http_status"}
    assert {errors[u] for u in html} <= {"not_an_image", "unsupported_format"}
    # The output CSV keeps one entry per input, empty where the image failed.
    status, _, raw = stack.http("GET", f"/v1/requests/{request_id}/output.csv")
    assert status == 200
    lines = raw.decode("utf-8-sig").splitlines()
    assert len(lines) == 1 + len(rows)
    payload = stack.one_webhook(path, request_id)
    assert payload["status"] == "completed_with_errors"
    assert (payload["progress"]["succeeded"], payload["progress"]["failed"]) == (6, 5)


def test_a_request_where_every_image_fails(stack: Client):
    rows = [[stack.image("a", "missing/"), stack.image("b", "text/")]]
    webhook, path = stack.hook()
    status, _, accepted = stack.submit(stack.csv(rows), webhook)
    assert status == 202
    doc = stack.wait_terminal(accepted["request_id"])
    assert doc["status"] == "failed"
    assert_progress(doc, 2, 0, 2)
    assert stack.one_webhook(path, accepted["request_id"])["status"] == "failed"


def test_a_csv_dropped_in_the_bucket(stack: Client):
    rows = [[stack.image(f"drop{i}")] for i in range(4)] + [[stack.image("dropgone", "missing/")]]
    webhook, path = stack.hook()
    key = f"incoming/blackbox {uuid.uuid4().hex[:6]}.csv"
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=stack.csv(rows), Metadata={"webhook-url": webhook})
    # The request ID is not computable from the key: it arrives with the webhook.
    delivered = wait_for("the drop's webhook", lambda: stack.hooks.accepted(path), timeout=600, every=1.0)
    request_id = delivered[0].json()["request_id"]
    doc = stack.wait_terminal(request_id)
    assert doc["status"] == "completed_with_errors"
    assert_progress(doc, 5, 4, 1)
    stack.one_webhook(path, request_id)
    assert not stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=f"rejected/{key}").get("Contents")
    # The same file put again (same ETag; S3 also repeats events) is the same request: no second webhook.
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=stack.csv(rows), Metadata={"webhook-url": webhook})
    time.sleep(15)
    assert len(stack.hooks.accepted(path)) == 1


def test_a_process_instance_killed_mid_batch(stack: Client):
    # Slow images keep the batch in flight long enough to kill its process.
    rows = [[stack.image(f"slow{i}-{j}", "slow/1500/") for j in range(4)] for i in range(5)]
    webhook, path = stack.hook()
    status, _, accepted = stack.submit(stack.csv(rows), webhook)
    assert status == 202
    request_id = accepted["request_id"]
    process = stack.logical("process")

    def busy_pid() -> int | None:
        for inst in stack.emu.admin("/functions")[process]["instances"]:
            if inst["busy"] and inst["pid"]:
                return inst["pid"]
        return None

    crashes_before = stack.emu.admin("/functions")[process]["crashes"]
    pid = wait_for("a busy process instance", busy_pid, timeout=120, every=0.2)
    time.sleep(1.0)  # into its batch
    os.kill(pid, signal.SIGKILL)  # as an out-of-memory kill would
    wait_for("the emulator to see the crash", lambda: stack.emu.admin("/functions")[process]["crashes"] > crashes_before, timeout=30)
    doc = stack.wait_terminal(request_id, timeout=600)
    assert doc["status"] == "completed"
    assert_progress(doc, 20, 20, 0)
    stack.one_webhook(path, request_id)


def _hold_jobs(stack: Client, request_id: str, count: int) -> list[dict[str, Any]]:
    """Takes `count` image jobs of the request off the jobs queue (the process mapping is disabled)."""
    taken: list[dict[str, Any]] = []
    end = time.monotonic() + 120
    while len(taken) < count and time.monotonic() < end:
        got = stack.sqs.receive_message(
            QueueUrl=stack.jobs_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        for m in got:
            if request_id in m["Body"] and len(taken) < count:
                taken.append(m)
            else:
                stack.sqs.change_message_visibility(QueueUrl=stack.jobs_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        if not got:
            time.sleep(0.5)
    assert len(taken) == count, f"found {len(taken)} of {count} jobs of {request_id} on the queue"
    return taken


@needs_deadletter
def test_jobs_that_died_on_every_attempt_fail_with_worker_crashed(stack: Client):
    """Two of three jobs reach the DLQ as the redrive would put them there; the request still completes."""
    label = stack.sources_of("process")[0]["label"]
    rows = [[stack.image("kept"), stack.image("dead1"), stack.image("dead2")]]
    webhook, path = stack.hook()
    stack.emu.admin(f"/event-sources/{label}/disable", "POST")
    try:
        time.sleep(2)  # a poll under way finishes
        status, _, accepted = stack.submit(stack.csv(rows), webhook)
        assert status == 202
        request_id = accepted["request_id"]
        held = _hold_jobs(stack, request_id, 3)
        dead = [m for m in held if "dead" in m["Body"]]
        assert len(dead) == 2
        for m in dead:
            stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=m["Body"])
            stack.sqs.delete_message(QueueUrl=stack.jobs_url, ReceiptHandle=m["ReceiptHandle"])
        for m in held:
            if m not in dead:
                stack.sqs.change_message_visibility(QueueUrl=stack.jobs_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    finally:
        stack.emu.admin(f"/event-sources/{label}/enable", "POST")
    doc = stack.wait_terminal(request_id)
    assert doc["status"] == "completed_with_errors"
    assert_progress(doc, 3, 1, 2)
    codes = image_errors(doc)
    assert sorted(c for c in codes.values() if c) == ["worker_crashed", "worker_crashed"]
    stack.one_webhook(path, request_id)


@needs_deadletter
def test_a_poison_message_in_the_dead_letter_queue_is_consumed_and_harms_nothing(stack: Client):
    for body in ("not json at all", json.dumps({"request_id": str(uuid.uuid4()), "serial_number": 1, "index": 1}), "{}"):
        stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=body)
    wait_for("the dead-letter queue to be read empty", lambda: stack.queue_depth(stack.dlq_url) == 0, timeout=120, every=1.0)
    # The service still works after it.
    webhook, path = stack.hook()
    status, _, accepted = stack.submit(stack.csv([[stack.image("after-poison")]]), webhook)
    assert status == 202
    doc = stack.wait_terminal(accepted["request_id"])
    assert doc["status"] == "completed"
    assert_progress(doc, 1, 1, 0)
    stack.one_webhook(path, accepted["request_id"])
