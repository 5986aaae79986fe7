"""The DynamoDB serializer fast path of infra/moto_serial_server.py writes
exactly the JSON moto's generic serializer writes."""

from __future__ import annotations

import base64
import random
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCRIPT = r'''
import json, random, sys, base64
sys.path.insert(0, sys.argv[2])
if sys.argv[1] == "patched":
    import moto_serial_server
    assert moto_serial_server.patch_moto_serializer()
from moto.core.serialize import JSONSerializer, XFormedAttributePicker
from moto.core.utils import get_service_model

rng = random.Random(7)

def value(depth=0):
    kind = rng.choice(["S", "N", "BOOL", "NULL", "M", "L", "SS", "NS", "B", "BS", "S", "N", "M"] if depth < 3 else ["S", "N", "BOOL", "NULL"])
    if kind == "S": return {"S": rng.choice(["", "x", "héllo", "a,b", "\"q\""]) * rng.randint(0, 3)}
    if kind == "N": return {"N": str(rng.randint(-10**6, 10**6))}
    if kind == "BOOL": return {"BOOL": rng.random() < 0.5}
    if kind == "NULL": return {"NULL": True}
    if kind == "M": return {"M": {rng.choice(["a", "b", "c", "status", "", "M"]): value(depth + 1) for _ in range(rng.randint(0, 4))}}
    if kind == "L": return {"L": [value(depth + 1) for _ in range(rng.randint(0, 4))]}
    if kind == "SS": return {"SS": ["a", "b"]}
    if kind == "NS": return {"NS": ["1", "2.5"]}
    if kind == "B": return {"B": base64.b64encode(b"bin").decode()}
    return {"BS": [base64.b64encode(b"x").decode()]}

def item():
    return {f"a{i}": value() for i in range(rng.randint(1, 6))}

out = []
for service, op, result in [
    ("dynamodb", "Query", lambda: {"Items": [item() for _ in range(30)], "Count": 30, "ScannedCount": 30, "LastEvaluatedKey": {"pk": {"S": "R"}, "sk": {"S": "I#1"}}}),
    ("dynamodb", "GetItem", lambda: {"Item": item()}),
    ("dynamodb", "GetItem", lambda: {}),
    ("dynamodbstreams", "GetRecords", lambda: {"Records": [{"eventID": "e", "eventName": "MODIFY", "dynamodb": {"Keys": item(), "NewImage": item(), "OldImage": item(), "SequenceNumber": "1", "SizeBytes": 3, "StreamViewType": "NEW_AND_OLD_IMAGES"}} for _ in range(20)], "NextShardIterator": "it"}),
]:
    for _ in range(20):
        model = get_service_model(service)
        ser = JSONSerializer(operation_model=model.operation_model(op), pretty_print=False, value_picker=XFormedAttributePicker())
        out.append(ser.serialize(result())["body"])
print(json.dumps(out))
'''


def run(mode: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(HERE.parent)], capture_output=True, text=True, timeout=300, check=True
    ).stdout


def test_fast_path_writes_the_same_json_byte_for_byte():
    patched, released = run("patched"), run("unpatched")
    assert len(patched) > 10_000
    assert patched == released
