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


def test_patched_transactions_answer_and_change_exactly_as_moto_does():
    def run(mode: str) -> list:
        out = subprocess.run(
            [sys.executable, str(HERE / "ddb_scenario.py"), mode], capture_output=True, text=True, timeout=120, check=True
        )
        return json.loads(out.stdout)

    patched, released = run("patched"), run("unpatched")
    assert len(patched) == len(released)
    for mine, theirs in zip(patched, released):
        assert mine == theirs
    outcomes = {step[0]: step[1] for step in patched}
    # The scenario commits, rolls back on a condition, and fails validation.
    assert outcomes["first image"] != "raised" and outcomes["update, delete and put across tables"] != "raised"
    assert outcomes["duplicate image"] == "raised" and outcomes["new counter item by update, then a failure"] == "raised"
    assert outcomes["two actions on one item"] == "raised" and outcomes["counting past the total"] == "raised"
    rolled_back = {step[0]: step for step in patched}
    assert rolled_back["after rollback"][1:] == rolled_back["after duplicate"][1:]


def test_a_transaction_copies_the_items_it_names_not_the_table():
    import boto3
    import moto_serial_server
    from moto import mock_aws
    from moto.dynamodb.models.dynamo_type import Item

    assert moto_serial_server.patch_moto_dynamodb()
    copies = {"n": 0}
    original = Item.__deepcopy__

    def counted(self, memo):
        copies["n"] += 1
        return original(self, memo)

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        ddb.create_table(
            TableName="big",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        for i in range(0, 2000, 25):
            ddb.batch_write_item(
                RequestItems={"big": [{"PutRequest": {"Item": {"pk": {"S": "R"}, "sk": {"S": f"I#{j}"}}}} for j in range(i, i + 25)]}
            )
        Item.__deepcopy__ = counted
        try:
            ddb.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": "big", "Item": {"pk": {"S": "R"}, "sk": {"S": "I#new"}}, "ConditionExpression": "attribute_not_exists(pk)"}},
                    {"Update": {"TableName": "big", "Key": {"pk": {"S": "R"}, "sk": {"S": "A"}}, "UpdateExpression": "ADD n :one",
                                "ExpressionAttributeValues": {":one": {"N": "1"}}}},
                ]
            )
        finally:
            Item.__deepcopy__ = original
        # Two actions: a handful of item copies (moto's update copies the old item too), not 2,000.
        assert copies["n"] <= 6, copies
        assert ddb.get_item(TableName="big", Key={"pk": {"S": "R"}, "sk": {"S": "A"}})["Item"]["n"] == {"N": "1"}
