"""The Lambda emulator against moto, with the stub function of infra/tests/bin
wired by infra/tests/stub_template.yaml: what each event source delivers,
and what it does with the function's answers, failures and timeouts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from emulated_stack import INFRA, Emulator, Moto, wait_for

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "stub_template.yaml"
BIN = HERE / "bin"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("emulator")
    out = work / "stub"
    out.mkdir()
    moto = Moto(work)
    emu = None
    try:
        emu = Emulator(
            moto,
            work,
            TEMPLATE,
            BIN,
            [
                "--param", "Flag=on",
                "--env", f"STUB_OUT={out}",
                "--env", "STUB_SLOW_S=9",
                "--async-retry-delay", "0.2",
            ],
        )
        yield Stack(moto, emu, out)
    finally:
        if emu is not None:
            emu.stop()
        moto.stop()


class Stack:
    def __init__(self, moto: Moto, emu: Emulator, out: Path) -> None:
        self.moto, self.emu, self.out = moto, emu, out
        self.info = emu.info
        self.api = self.info["api"]["Api"]
        self.raw_api = self.info["api"]["RawApi"]
        self.sqs = moto.client("sqs")
        self.ddb = moto.client("dynamodb")
        self.s3 = moto.client("s3")

    def resource(self, logical: str) -> dict[str, Any]:
        return self.info["resources"][logical]

    def records(self, function: str) -> list[dict[str, Any]]:
        """Every invocation the stub function `function` (logical id) took, oldest first."""
        path = self.out / f"{self.info['functions'][function]}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def invocations(self, function: str) -> list[dict[str, Any]]:
        return [r for r in self.records(function) if "event" in r]


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


# -- start


def test_a_function_that_cannot_start_stops_the_emulator(tmp_path: Path):
    # First in the module: its moto server is gone before the shared stack starts one.
    moto = Moto(tmp_path)
    try:
        proc = subprocess.run(
            [sys.executable, str(INFRA / "lambda_emulator.py"), "--template", str(TEMPLATE), "--endpoint", moto.endpoint,
             "--bin-dir", str(BIN), "--env", "STUB_INIT_FAIL=1", "--env", f"STUB_OUT={tmp_path}", "--log-dir", str(tmp_path / "logs")],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        moto.stop()
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and "Stub.InitFailed: told to fail" in proc.stderr


# -- API Gateway


def test_http_api_sends_payload_format_2_and_maps_the_response(stack: Stack):
    status, headers, body = call(
        "GET", f"{stack.api}/v1/things/abc%20d?x=1&x=2&y=", headers={"Cookie": "c1=v1; c2=v2", "X-Custom": "yes"}
    )
    assert status == 201
    assert headers["x-stub"] == "imgproc-HttpFunction"
    assert headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert headers["Apigw-Requestid"]
    event = json.loads(body)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /v1/things/{id}"
    assert event["rawPath"] == "/v1/things/abc%20d"
    assert event["pathParameters"] == {"id": "abc d"}
    assert event["rawQueryString"] == "x=1&x=2&y="
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert "cookie" not in event["headers"] and event["headers"]["x-custom"] == "yes"
    ctx = event["requestContext"]
    assert ctx["http"]["method"] == "GET" and ctx["stage"] == "$default" and ctx["routeKey"] == event["routeKey"]
    assert ctx["requestId"] == headers["Apigw-Requestid"]
    assert event["isBase64Encoded"] is False and "body" not in event


def test_http_api_picks_the_most_specific_route(stack: Stack):
    def route(method: str, path: str) -> tuple[int, Any]:
        status, _, body = call(method, stack.api + path)
        return status, (json.loads(body).get("routeKey") if status == 201 else json.loads(body))

    assert route("GET", "/v1/things/special") == (201, "GET /v1/things/special")
    assert route("GET", "/v1/things/other") == (201, "GET /v1/things/{id}")
    assert route("PUT", "/files/a/b/c.jpg") == (201, "ANY /files/{proxy+}")
    assert route("DELETE", "/anything") == (201, "ANY /{anything}")
    # No $default on this API: API Gateway's own answer.
    assert route("DELETE", "/v1/things/abc") == (404, {"message": "Not Found"})
    assert route("GET", "/v1/things/abc/more") == (404, {"message": "Not Found"})
    _, _, body = call("PUT", stack.api + "/files/a/b/c.jpg")
    assert json.loads(body)["pathParameters"] == {"proxy": "a/b/c.jpg"}


def test_raw_api_gateway_v2_routes_and_default(stack: Stack):
    status, _, body = call("POST", f"{stack.raw_api}/v1/requests", b"a,b\n1,2\n", {"Content-Type": "text/csv"})
    assert status == 201
    event = json.loads(body)
    assert event["routeKey"] == "POST /v1/requests"
    assert event["isBase64Encoded"] is False and event["body"] == "a,b\n1,2\n"
    # Anything else goes to $default, with the path as sent.
    status, _, body = call("GET", f"{stack.raw_api}/v1/requests/../etc")
    assert status == 201
    event = json.loads(body)
    assert event["routeKey"] == "$default" and event["rawPath"] == "/v1/requests/../etc"
    assert stack.invocations("RawFunction")[-1]["event"]["requestContext"]["routeKey"] == "$default"
    # An API made by quick create (Target on the Api) routes everything to its function.
    status, _, body = call("PATCH", f"{stack.info['api']['QuickApi']}/any/path?q=1")
    assert status == 201 and json.loads(body)["routeKey"] == "$default"


def test_binary_bodies_travel_base64_both_ways(stack: Stack):
    payload = bytes(range(256)) * 4
    status, _, body = call("POST", f"{stack.api}/v1/things", payload, {"Content-Type": "image/png"})
    assert status == 201
    event = json.loads(body)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload
    status, headers, body = call("GET", f"{stack.api}/binary")
    assert status == 200 and headers["content-type"] == "image/png" and body == bytes(range(256))
    # An answer without statusCode is a 200 JSON body (payload format 2.0).
    status, headers, body = call("GET", f"{stack.api}/plain")
    assert status == 200 and json.loads(body) == {"answer": 42}


def test_gateway_limits_and_function_failures(stack: Stack):
    # Lambda's 6 MB response limit: the runtime is refused, the client gets a 502.
    status, _, body = call("GET", f"{stack.api}/big")
    assert status == 502 and json.loads(body) == {"message": "Internal Server Error"}
    wait_for("the runtime to be told 413", lambda: any(r.get("response_status") == 413 for r in stack.records("HttpFunction")), timeout=10)
    # A function error is a 500.
    assert call("GET", f"{stack.api}/error")[0] == 500
    # A request body over API Gateway's 10 MB.
    assert call("POST", f"{stack.api}/v1/things", b"x" * (10 * 1024 * 1024 + 1), {"Content-Type": "text/plain"})[0] == 413
    # The integration timeout (RawIntegration: 4 s) answers 503 while the function still runs.
    t0 = time.monotonic()
    status, _, body = call("GET", f"{stack.raw_api}/slow")
    assert status == 503 and json.loads(body) == {"message": "Service Unavailable"}
    assert 3.5 < time.monotonic() - t0 < 8


def test_timeout_and_crash_replace_the_process(stack: Stack):
    # HttpFunction's Timeout is 8 s; /slow sleeps 9 s: killed at the deadline, as Lambda does.
    before = stack.emu.admin("/functions")["HttpFunction"]
    t0 = time.monotonic()
    assert call("GET", f"{stack.api}/slow")[0] == 500
    assert 7.5 < time.monotonic() - t0 < 12
    after = stack.emu.admin("/functions")["HttpFunction"]
    assert after["timeouts"] == before["timeouts"] + 1
    slow_pid = stack.invocations("HttpFunction")[-1]["pid"]
    assert call("GET", f"{stack.api}/v1/things/x")[0] == 201
    pids = {r["pid"] for r in stack.invocations("HttpFunction")}
    assert slow_pid in pids
    # A crash fails the invocation; the next one starts a fresh process.
    assert call("GET", f"{stack.api}/crash")[0] == 500
    crashed = stack.invocations("HttpFunction")[-1]["pid"]
    assert call("GET", f"{stack.api}/v1/things/y")[0] == 201
    assert stack.invocations("HttpFunction")[-1]["pid"] != crashed
    assert stack.emu.admin("/functions")["HttpFunction"]["crashes"] >= before["crashes"] + 1


def test_runtime_headers_and_environment(stack: Stack):
    assert call("GET", f"{stack.api}/v1/things/env")[0] == 201
    rec = stack.invocations("HttpFunction")[-1]
    h, env = rec["headers"], rec["env"]
    assert h["lambda-runtime-invoked-function-arn"] == "arn:aws:lambda:us-east-1:123456789012:function:imgproc-HttpFunction"
    deadline_ms = int(h["lambda-runtime-deadline-ms"])
    assert 0 < deadline_ms / 1000 - time.time() <= 8
    assert h["lambda-runtime-trace-id"].startswith("Root=1-")
    # Globals merged under the function's own variables; intrinsics resolved against moto.
    assert env["GREETING"] == "own"
    assert env["FLAG"] == "yes"  # --param Flag=on
    assert env["TABLE_NAME"] == "imgproc-Table"
    assert env["QUEUE_URL"] == stack.resource("Jobs")["QueueUrl"]
    assert env["BUCKET"] == "imgproc-data-123456789012" == stack.resource("DataBucket")["Ref"]
    assert env["SELF_URL"] == stack.api + "/v1"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "imgproc-HttpFunction"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_ENDPOINT_URL"] == stack.moto.endpoint
    assert env["STUB_OUT"] == str(stack.out)
    raw_env = stack.invocations("RawFunction")[-1]["env"]
    assert raw_env["GREETING"] == "hello-imgproc-us-east-1"


# -- SQS


def send(stack: Stack, queue: str, bodies: list[str]) -> None:
    url = stack.resource(queue)["QueueUrl"]
    for i in range(0, len(bodies), 10):
        stack.sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(j), "MessageBody": b, "MessageAttributes": {"kind": {"DataType": "String", "StringValue": "test"}}}
                for j, b in enumerate(bodies[i : i + 10])
            ],
        )


def deliveries(stack: Stack, function: str, body: str) -> list[dict[str, Any]]:
    return [
        r for inv in stack.invocations(function) for r in inv["event"].get("Records", []) if r.get("body") == body
    ]


def queue_empty(stack: Stack, queue: str) -> bool:
    a = stack.sqs.get_queue_attributes(
        QueueUrl=stack.resource(queue)["QueueUrl"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return all(v == "0" for v in a.values())


def test_sqs_partial_batch_response_keeps_only_the_failures(stack: Stack):
    bodies = [f"ok-{i}" for i in range(12)] + ["fail-a"]
    send(stack, "Jobs", bodies)
    wait_for("fail-a to reach the dead-letter function", lambda: deliveries(stack, "DeadLetterFunction", "fail-a"), timeout=90)
    for b in bodies[:-1]:
        got = deliveries(stack, "QueueFunction", b)
        assert len(got) == 1, b  # deleted after the first success
    failed = deliveries(stack, "QueueFunction", "fail-a")
    # maxReceiveCount 3: three deliveries, then the redrive.
    assert [r["attributes"]["ApproximateReceiveCount"] for r in failed] == ["1", "2", "3"]
    rec = failed[0]
    assert rec["eventSource"] == "aws:sqs" and rec["eventSourceARN"] == stack.resource("Jobs")["Arn"]
    assert rec["messageAttributes"]["kind"] == {
        "stringValue": "test", "binaryValue": None, "stringListValues": [], "binaryListValues": [], "dataType": "String"
    }
    assert rec["md5OfBody"] and rec["receiptHandle"] and rec["awsRegion"] == "us-east-1"
    dlq = deliveries(stack, "DeadLetterFunction", "fail-a")[0]
    assert dlq["eventSourceARN"] == stack.resource("JobsDeadLetters")["Arn"]
    # BatchSize 5 on the SQS event, 10 on the raw mapping.
    assert all(len(inv["event"]["Records"]) <= 5 for inv in stack.invocations("QueueFunction"))
    wait_for("both queues to empty", lambda: queue_empty(stack, "Jobs") and queue_empty(stack, "JobsDeadLetters"), timeout=30)


def test_sqs_failed_invocation_returns_the_whole_batch(stack: Stack):
    # A function error, an invalid batchItemFailures entry, and a timeout (Timeout 2 s) each
    # leave every message of their batch on the queue.
    for body in ("raise", "bogus-failure", "slow"):
        send(stack, "Jobs", [body])
        got = wait_for(f"{body} to be delivered 3 times", lambda: len(deliveries(stack, "QueueFunction", body)) >= 3 and deliveries(stack, "QueueFunction", body), timeout=120)
        assert [r["attributes"]["ApproximateReceiveCount"] for r in got[:3]] == ["1", "2", "3"]
        wait_for(f"{body} in the dead-letter function", lambda: deliveries(stack, "DeadLetterFunction", body), timeout=60)
    assert stack.emu.admin("/functions")["QueueFunction"]["timeouts"] >= 3


def test_disabled_event_source_takes_nothing_until_enabled(stack: Stack):
    label = "QueueFunction.Jobs"
    assert stack.emu.admin(f"/event-sources/{label}/disable", "POST")["enabled"] is False
    try:
        time.sleep(1.5)  # a poll already under way finishes
        send(stack, "Jobs", ["ok-while-disabled"])
        time.sleep(3)
        assert deliveries(stack, "QueueFunction", "ok-while-disabled") == []
    finally:
        stack.emu.admin(f"/event-sources/{label}/enable", "POST")
    wait_for("the message after enabling", lambda: deliveries(stack, "QueueFunction", "ok-while-disabled"), timeout=30)


# -- DynamoDB stream


def put(stack: Stack, pk: str, sk: str, **attrs: str) -> None:
    item = {"pk": {"S": pk}, "sk": {"S": sk}, **{k: {"S": v} for k, v in attrs.items()}}
    stack.ddb.put_item(TableName=stack.resource("Table")["Ref"], Item=item)


def stream_records(stack: Stack, pk: str) -> list[dict[str, Any]]:
    return [r for inv in stack.invocations("StreamFunction") for r in inv["event"]["Records"] if r["dynamodb"]["Keys"]["pk"]["S"] == pk]


def test_stream_filters_batches_and_adds_the_source_arn(stack: Stack):
    put(stack, "s1", "A")  # INSERT without done: filtered out
    put(stack, "s1", "A", done="yes")  # MODIFY gaining done: delivered
    put(stack, "s1", "A", done="again")  # MODIFY, done already there: filtered out
    put(stack, "s1", "B", done="yes")  # sk not starting with A: filtered out
    put(stack, "s2", "A2", done="yes")  # INSERT with done: delivered
    got = wait_for("the two matching records", lambda: len(stream_records(stack, "s1")) + len(stream_records(stack, "s2")) >= 2 and stream_records(stack, "s1") + stream_records(stack, "s2"))
    time.sleep(1.5)
    got = stream_records(stack, "s1") + stream_records(stack, "s2")
    assert [(r["eventName"], r["dynamodb"]["Keys"]["sk"]["S"]) for r in got] == [("MODIFY", "A"), ("INSERT", "A2")]
    rec = got[0]
    assert rec["eventSourceARN"] == stack.resource("Table")["StreamArn"]
    assert rec["dynamodb"]["NewImage"]["done"] == {"S": "yes"} and "done" not in rec["dynamodb"]["OldImage"]
    assert isinstance(rec["dynamodb"]["ApproximateCreationDateTime"], int)
    assert all(len(inv["event"]["Records"]) <= 3 for inv in stack.invocations("StreamFunction"))


def failure_records(stack: Stack) -> list[dict[str, Any]]:
    url = stack.resource("StreamFailures")["QueueUrl"]
    got = stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
    for m in got:
        stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(m["Body"]) for m in got]


def test_stream_retries_then_sends_the_batch_to_the_on_failure_queue(stack: Stack):
    put(stack, "f1", "A", done="yes", fail="raise")
    put(stack, "f2", "A", done="yes")
    failures: list[dict[str, Any]] = []
    wait_for("an on-failure record", lambda: failures.extend(failure_records(stack)) or failures, timeout=60)
    info = failures[0]["DDBStreamBatchInfo"]
    assert failures[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failures[0]["requestContext"]["approximateInvokeCount"] == 2  # MaximumRetryAttempts 1
    assert info["streamArn"] == stack.resource("Table")["StreamArn"] and info["batchSize"] >= 1
    # f2 came in the same batch or after it: either way the stream moved on and delivered it.
    wait_for("the record after the failed batch", lambda: stream_records(stack, "f2") or failures[0]["DDBStreamBatchInfo"]["batchSize"] == 2, timeout=30)
    # A partial failure: the batch is retried from the failed record, which ends on the queue alone.
    put(stack, "p1", "A", done="yes", fail="item")
    more: list[dict[str, Any]] = []
    wait_for("the partial failure's record", lambda: more.extend(failure_records(stack)) or more, timeout=60)
    assert more[0]["DDBStreamBatchInfo"]["batchSize"] == 1
    assert len(stream_records(stack, "p1")) == 2


# -- S3


def test_s3_notifications_invoke_for_matching_keys_and_retry_async_failures(stack: Stack):
    bucket = stack.resource("DataBucket")["Ref"]
    for key in ("incoming/my file.csv", "incoming/ignored.txt", "elsewhere/x.csv", "incoming/fail.csv"):
        stack.s3.put_object(Bucket=bucket, Key=key, Body=b"S. No.,Product Name,Input Image Urls\n")

    def keys() -> list[str]:
        return [r["s3"]["object"]["key"] for inv in stack.invocations("DropFunction") for r in inv["event"]["Records"]]

    wait_for("the drop and the failing drop's three attempts", lambda: keys().count("incoming%2Fmy+file.csv") == 1 and keys().count("incoming%2Ffail.csv") == 3, timeout=60)
    time.sleep(1)
    assert sorted(set(keys())) == ["incoming%2Ffail.csv", "incoming%2Fmy+file.csv"]
    rec = next(inv["event"]["Records"][0] for inv in stack.invocations("DropFunction"))
    assert rec["eventSource"] == "aws:s3" and rec["eventName"] == "ObjectCreated:Put"
    assert rec["s3"]["bucket"]["name"] == bucket and rec["s3"]["object"]["size"] > 0 and rec["s3"]["object"]["eTag"]
    assert rec["eventTime"].endswith("Z")


# -- stop


def test_shutdown_stops_every_function_process(stack: Stack):
    # Last in this module: stops the shared emulator.
    pids = [i["pid"] for f in stack.emu.admin("/functions").values() for i in f["instances"] if i["pid"]]
    assert pids
    assert stack.emu.stop() == 0
    assert not stack.emu.ready_file.exists()
    for pid in pids:
        wait_for(f"process {pid} to be gone", lambda pid=pid: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), timeout=10)
    # Stopped, not answered: nothing was handed a `next` answer without an invocation.
    for log in (stack.emu.workdir / "logs").glob("*.log"):
        assert "Gone" not in log.read_text() and "instance replaced" not in log.read_text(), log
