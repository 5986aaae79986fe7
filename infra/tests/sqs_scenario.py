"""One scripted run of moto's SQS backend, printed as JSON, for comparing
moto as released with the patched moto of infra/moto_serial_server.py.

    python3 infra/tests/sqs_scenario.py patched|unpatched

moto's random generator is seeded, so both runs draw the same message IDs
and receipt handles; timestamps are left out of the output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMESTAMPS = {"SentTimestamp", "ApproximateFirstReceiveTimestamp", "CreatedTimestamp", "LastModifiedTimestamp"}


def main() -> None:
    mode = sys.argv[1]
    if mode == "patched":
        import moto_serial_server

        assert moto_serial_server.patch_moto_sqs(), "the patch did not apply"
    from moto.moto_api._internal import mock_random
    from moto.sqs.models import sqs_backends

    mock_random.seed(1234)
    backend = sqs_backends["123456789012"]["us-east-1"]
    log: list[Any] = []

    def step(name: str, call: Callable[[], Any]) -> Any:
        try:
            out = call()
        except Exception as e:  # the error moto raises is part of its behaviour
            log.append([name, "raised", type(e).__name__, str(e)])
            return None
        log.append([name, describe(out)])
        return out

    def describe(out: Any) -> Any:
        if isinstance(out, tuple):
            return [describe(x) for x in out]
        if isinstance(out, list):
            return [describe(x) for x in out]
        if hasattr(out, "receipt_handle") and hasattr(out, "body"):
            return {
                "id": out.id,
                "body": out.body,
                "receipt_handle": out.receipt_handle,
                "receive_count": out.approximate_receive_count,
                "attributes": out.message_attributes,
                "dedup": out.deduplication_id,
                "group": out.group_id,
                "sequence": out.sequence_number,
            }
        if hasattr(out, "queue_arn"):
            return out.name
        if isinstance(out, dict):
            return {k: describe(v) for k, v in out.items() if k not in TIMESTAMPS}
        return out

    def state(queue_name: str) -> Any:
        q = backend.get_queue(queue_name)
        return {
            "messages": [m.id for m in q._messages],
            "pending": sorted(m.id for m in q.pending_messages),
            "deleted": len(q.deleted_messages),
            "attributes": describe(backend.get_queue_attributes(queue_name, ["All"])),
        }

    dlq = backend.create_queue("jobs-dlq")
    backend.create_queue(
        "jobs",
        VisibilityTimeout=30,
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq.queue_arn, "maxReceiveCount": 2}),
    )
    backend.create_queue("ordered.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    backend.create_queue("explicit.fifo", FifoQueue="true", ContentBasedDeduplication="false")

    def entries(start: int, n: int, **extra: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for i in range(start, start + n):
            e = {
                "Id": f"m{i}",
                "MessageBody": f"job {i}",
                "MessageAttributes": {"n": {"DataType": "Number", "StringValue": str(i)}} if i % 3 == 0 else {},
                "DelaySeconds": None,
            }
            e.update(extra)
            out[str(i)] = e
        return out

    step("batch 1", lambda: backend.send_message_batch("jobs", entries(0, 10)))
    step("batch 2", lambda: backend.send_message_batch("jobs", entries(10, 10)))
    step("batch delayed", lambda: backend.send_message_batch("jobs", entries(20, 3, DelaySeconds=300)))
    step("batch bad delay", lambda: backend.send_message_batch("jobs", entries(23, 2, DelaySeconds=1000)))
    step("single", lambda: backend.send_message("jobs", "single", delay_seconds=0))
    step("state after sends", lambda: state("jobs"))

    first = step("receive 10", lambda: backend.receive_message("jobs", 10, 0, 30, ["All"])) or []
    second = step("receive 5", lambda: backend.receive_message("jobs", 5, 0, 30, [])) or []
    step("state in flight", lambda: state("jobs"))
    for m in first[:4]:
        step("delete", lambda m=m: backend.delete_message("jobs", m.receipt_handle))
    step("delete again", lambda: backend.delete_message("jobs", first[0].receipt_handle))
    step("delete unknown", lambda: backend.delete_message("jobs", "x" * 185))
    step(
        "delete batch",
        lambda: backend.delete_message_batch(
            "jobs",
            [{"Id": "a", "ReceiptHandle": first[4].receipt_handle}, {"Id": "b", "ReceiptHandle": "nope"}],
        ),
    )
    for m in first[5:8]:
        step("back now", lambda m=m: backend.change_message_visibility("jobs", m.receipt_handle, 0))
    step("too long", lambda: backend.change_message_visibility("jobs", second[0].receipt_handle, 50000))
    step("unknown handle", lambda: backend.change_message_visibility("jobs", "y" * 185, 0))
    step("state after changes", lambda: state("jobs"))
    again = step("receive returned", lambda: backend.receive_message("jobs", 10, 0, 0, ["All"])) or []
    # Received with a visibility of 0: visible at once, so the next receive
    # takes them again; at the third the redrive moves them.
    step("receive 3rd", lambda: backend.receive_message("jobs", 10, 0, 30, []))
    step("state after redrive", lambda: state("jobs"))
    step("state of dlq", lambda: state("jobs-dlq"))
    if again:
        # An old handle of a message now in the dead-letter queue.
        step("delete moved", lambda: backend.delete_message("jobs", again[0].receipt_handle))
        step("delete in dlq by old handle", lambda: backend.delete_message("jobs-dlq", again[0].receipt_handle))
    step("dlq receive", lambda: backend.receive_message("jobs-dlq", 10, 0, 30, []))
    # An old receipt handle still deletes (moto keeps every past handle).
    if second:
        step("delete by old handle", lambda: backend.delete_message("jobs", second[1].receipt_handle))
    # A message past its retention period ends the receive.
    q = backend.get_queue("jobs")
    visible = [m for m in q._messages if m.visible and not m.delayed]
    if visible:
        visible[0].sent_timestamp = 0
    step("receive stale", lambda: backend.receive_message("jobs", 10, 0, 30, []))
    step("state at end", lambda: state("jobs"))

    step("fifo batch", lambda: backend.send_message_batch("ordered.fifo", entries(0, 4, MessageGroupId="g1")))
    step("fifo dup", lambda: backend.send_message("ordered.fifo", "job 1", group_id="g1"))
    step("fifo other group", lambda: backend.send_message("ordered.fifo", "other", group_id="g2"))
    step("fifo receive", lambda: backend.receive_message("ordered.fifo", 10, 0, 30, []))
    step("fifo receive blocked", lambda: backend.receive_message("ordered.fifo", 10, 0, 30, []))
    step("fifo state", lambda: state("ordered.fifo"))
    step("explicit no dedup id", lambda: backend.send_message("explicit.fifo", "a", group_id="g"))
    step("explicit", lambda: backend.send_message("explicit.fifo", "a", group_id="g", deduplication_id="d1"))
    step("explicit dup", lambda: backend.send_message("explicit.fifo", "b", group_id="g", deduplication_id="d1"))
    step("explicit delay", lambda: backend.send_message("explicit.fifo", "c", group_id="g", deduplication_id="d2", delay_seconds=5))
    step("explicit state", lambda: state("explicit.fifo"))
    step("too big", lambda: backend.send_message("jobs", "x" * 300000))
    step("no such queue", lambda: backend.send_message("missing", "x"))
    # A receipt handle of None matches every message moto never handed out.
    step("delete None", lambda: backend.delete_message("jobs", None))
    step("state after delete None", lambda: state("jobs"))
    print(json.dumps(log, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
