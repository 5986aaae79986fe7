"""One scripted run of DynamoDB transactions on moto, printed as JSON, for
comparing moto as released with the patched moto of infra/moto_serial_server.py.

    python3 infra/tests/ddb_scenario.py patched|unpatched

Every answer or error, every item of both tables and every stream record
(with a fresh iterator each time) is in the output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    mode = sys.argv[1]
    if mode == "patched":
        import moto_serial_server

        assert moto_serial_server.patch_moto_dynamodb(), "the patch did not apply"
    import boto3
    from moto import mock_aws
    from moto.moto_api._internal import mock_random

    mock_random.seed(99)
    with mock_aws():
        kw = dict(region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t")
        ddb = boto3.client("dynamodb", **kw)
        streams = boto3.client("dynamodbstreams", **kw)
        ddb.create_table(
            TableName="jobs",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        ddb.create_table(
            TableName="flat",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        log: list[Any] = []

        def step(name: str, call: Callable[[], Any]) -> None:
            try:
                out = call()
                out.pop("ResponseMetadata", None)
                log.append([name, out])
            except Exception as e:  # the error is part of the behaviour compared
                resp = getattr(e, "response", {})
                log.append([name, "raised", resp.get("Error", {}), resp.get("CancellationReasons")])

        def state(name: str) -> None:
            items = {}
            for table in ("jobs", "flat"):
                items[table] = sorted(
                    (ddb.scan(TableName=table)["Items"]), key=lambda i: json.dumps(i, sort_keys=True)
                )
            records = {}
            for table in ("jobs", "flat"):
                arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
                shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
                it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                got = streams.get_records(ShardIterator=it, Limit=1000)["Records"]
                for r in got:
                    # Both are derived from the time of the write.
                    r["dynamodb"].pop("ApproximateCreationDateTime", None)
                    r["dynamodb"].pop("SizeBytes", None)
                records[table] = got
            log.append([name, items, records])

        def s(v: str) -> dict[str, str]:
            return {"S": v}

        ddb.put_item(TableName="jobs", Item={"pk": s("R1"), "sk": s("A"), "finished": {"N": "0"}, "images": {"N": "2"}})
        ddb.put_item(TableName="flat", Item={"id": s("x"), "v": {"N": "1"}})
        state("start")
        count = {
            "Update": {
                "TableName": "jobs",
                "Key": {"pk": s("R1"), "sk": s("A")},
                "UpdateExpression": "ADD finished :one",
                "ConditionExpression": "finished < images",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            }
        }

        def image(n: int, cond: bool = True) -> dict[str, Any]:
            put: dict[str, Any] = {"TableName": "jobs", "Item": {"pk": s("R1"), "sk": s(f"I#{n}"), "status": s("ok")}}
            if cond:
                put["ConditionExpression"] = "attribute_not_exists(pk)"
            return {"Put": put}

        step("first image", lambda: ddb.transact_write_items(TransactItems=[image(1), count]))
        state("after first")
        step("duplicate image", lambda: ddb.transact_write_items(TransactItems=[count, image(1)]))
        state("after duplicate")
        step("new counter item by update, then a failure", lambda: ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": "jobs", "Key": {"pk": s("R1"), "sk": s("S#007")}, "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Delete": {"TableName": "flat", "Key": {"id": s("x")}}},
            {"Put": {"TableName": "flat", "Item": {"id": s("new")}}},
            image(1),
        ]))
        state("after rollback")
        step("update, delete and put across tables", lambda: ddb.transact_write_items(TransactItems=[
            {"Update": {"TableName": "jobs", "Key": {"pk": s("R1"), "sk": s("S#007")}, "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Delete": {"TableName": "flat", "Key": {"id": s("x")}}},
            {"Put": {"TableName": "flat", "Item": {"id": s("new")}}},
            image(2),
            {"ConditionCheck": {"TableName": "jobs", "Key": {"pk": s("R1"), "sk": s("A")}, "ConditionExpression": "attribute_exists(images)"}},
        ]))
        state("after commit")
        step("two actions on one item", lambda: ddb.transact_write_items(TransactItems=[image(3, False), image(3, False)]))
        step("a bad update expression after a put", lambda: ddb.transact_write_items(TransactItems=[
            image(4),
            {"Update": {"TableName": "jobs", "Key": {"pk": s("R1"), "sk": s("A")}, "UpdateExpression": "SET #missing = :v",
                        "ExpressionAttributeValues": {":v": s("x")}}},
        ]))
        state("after errors")
        step("condition fails, old item asked back", lambda: ddb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "flat", "Item": {"id": s("y")}}},
            {"Put": {"TableName": "flat", "Item": {"id": s("new"), "v": {"N": "2"}}, "ConditionExpression": "attribute_not_exists(id)",
                     "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}},
        ]))
        step("missing table", lambda: ddb.transact_write_items(TransactItems=[
            image(5), {"Put": {"TableName": "nope", "Item": {"id": s("z")}}},
        ]))
        step("counting to the total", lambda: ddb.transact_write_items(TransactItems=[image(6), count]))
        step("counting past the total", lambda: ddb.transact_write_items(TransactItems=[image(7), count]))
        state("end")
        print(json.dumps(log, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
