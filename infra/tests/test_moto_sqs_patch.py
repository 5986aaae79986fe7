"""The SQS patch of infra/moto_serial_server.py: same behaviour as moto as
released, and per-message work that does not grow with the queue's depth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def run_scenario(mode: str) -> list:
    out = subprocess.run(
        [sys.executable, str(HERE / "sqs_scenario.py"), mode], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def test_patched_sqs_answers_and_changes_exactly_as_moto_does():
    patched, released = run_scenario("patched"), run_scenario("unpatched")
    assert len(patched) == len(released) > 40
    for mine, theirs in zip(patched, released):
        assert mine == theirs
    # The scenario reaches the paths it is meant to compare.
    names = {step[0] for step in patched}
    assert {"receive 3rd", "delete in dlq by old handle", "receive stale", "fifo dup", "delete None"} <= names
    raised = {step[0] for step in patched if step[1] == "raised"}
    assert {"delete unknown", "too long", "unknown handle", "delete moved", "explicit no dedup id"} <= raised


def test_work_per_message_does_not_depend_on_queue_depth():
    import moto_serial_server

    assert moto_serial_server.patch_moto_sqs()
    from moto.sqs.models import Message, sqs_backends

    calls = {"visible": 0, "handles": 0}
    visible, had = Message.visible, Message.had_receipt_handle

    def counted_visible(self):
        calls["visible"] += 1
        return visible.fget(self)

    def counted_had(self, handle):
        calls["handles"] += 1
        return had(self, handle)

    backend = sqs_backends["123456789012"]["us-east-1"]
    backend.create_queue("deep", VisibilityTimeout=60)
    depth = 5000
    for start in range(0, depth, 10):
        backend.send_message_batch(
            "deep",
            {str(i): {"Id": str(i), "MessageBody": "job", "MessageAttributes": {}, "DelaySeconds": None} for i in range(10)},
        )
    Message.visible = property(counted_visible)
    Message.had_receipt_handle = counted_had
    try:
        backend.send_message_batch(
            "deep",
            {str(i): {"Id": str(i), "MessageBody": "job", "MessageAttributes": {}, "DelaySeconds": None} for i in range(10)},
        )
        assert calls == {"visible": 0, "handles": 0}, "sending looked at the queued messages"
        for _ in range(5):
            got = backend.receive_message("deep", 10, 0, 60, [])
            assert len(got) == 10
            backend.delete_message_batch("deep", [{"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(got)])
        # 50 messages taken out of 5,010: a handful of checks each, not thousands.
        assert calls["visible"] <= 50 * 3, calls
        assert calls["handles"] == 0, calls
    finally:
        Message.visible, Message.had_receipt_handle = visible, had
    assert len(backend.get_queue("deep")._messages) == depth + 10 - 50
