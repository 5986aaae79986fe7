"""Runs the Lambda functions of template.yaml on this machine, wired as the
template wires them, against a moto server.

moto has no Lambda without Docker, so this plays the parts of AWS around the
function binaries (built by cargo, `BuildProperties.Binary`):

- CloudFormation, for the resources the functions touch: it creates the
  template's SQS queues (with their redrive policies), DynamoDB tables (with
  stream and TTL), S3 buckets and Secrets Manager secrets (`SecretString`,
  or a generated one for `GenerateSecretString`) on moto, and resolves every function's
  environment (Globals and its own; parameters at their defaults or
  `--param K=V`; `!Ref`, `!GetAtt`, `!Sub`, `!If`... to the moto names, URLs
  and ARNs). Other resource types (alarms, dashboards, policies) are not
  created; a reference to one resolves to a placeholder.
- Lambda: each function instance is one process of the binary with its own
  Runtime API (`/2018-06-01/runtime/invocation/next`, `/response`, `/error`,
  `/init/error`), the `Lambda-Runtime-*` headers and the environment Lambda
  sets. The function's `Timeout` is enforced by killing the process and
  starting a fresh one, as Lambda does; a crash fails the invocation and the
  next one starts cold. `MemorySize` is passed on but NOT enforced, and the
  process is not frozen between invocations.
- Event sources: API Gateway HTTP APIs (SAM `HttpApi` events and raw
  `AWS::ApiGatewayV2::Route`/`Integration` resources, payload format 2.0),
  SQS (batching, partial batch responses, `ScalingConfig`), DynamoDB streams
  (filters, batch size, retries, bisection, on-failure destination) and S3
  notifications (through an SQS queue the emulator subscribes to the bucket,
  moto's own notification support).

Every function's output goes to `<log-dir>/<LogicalId>.log`, with Lambda's
START/END/REPORT lines. Readiness: once the resources exist and every
function has started once, `--ready-file` is written (JSON: the API URLs,
the admin URL, the resources) and `lambda_emulator: ready` is printed to
stderr. SIGTERM or SIGINT stops every process it started.

    python3 infra/lambda_emulator.py --template template.yaml \\
        --endpoint http://127.0.0.1:5015 --bin-dir $CARGO_TARGET_DIR/debug \\
        --env ALLOW_PRIVATE_NETWORKS=true --log-dir /tmp/emu --ready-file /tmp/emu/ready.json

moto's server (infra/moto_serial_server.py) serves one request at a time, so
every poll here is a short poll (`WaitTimeSeconds=0`) and the waiting
happens on this side: a long poll would hold moto's only thread.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import yaml

ACCOUNT = "123456789012"
# Lambda's limits that the emulator enforces.
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # request and response of a synchronous invocation
HTTP_API_BODY_LIMIT = 10 * 1024 * 1024  # API Gateway HTTP API request payload
INIT_TIMEOUT_S = 30.0  # Lambda allows 10 s; this machine may be busy building
API_INTEGRATION_TIMEOUT_S = 29.0
NO_VALUE = object()  # AWS::NoValue: the property is left out


def log(msg: str) -> None:
    print(f"lambda_emulator: {msg}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --------------------------------------------------------------------------
# Template: YAML with CloudFormation's short-form tags, intrinsic functions.


class CfnLoader(yaml.SafeLoader):
    """YAML loader that turns `!Ref X` into `{"Ref": "X"}`, `!Sub s` into `{"Fn::Sub": s}`..."""


def _construct_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def merge_globals(template: dict[str, Any]) -> None:
    """Applies SAM's `Globals.Function` to every `AWS::Serverless::Function`."""
    defaults = (template.get("Globals") or {}).get("Function") or {}
    for res in template.get("Resources", {}).values():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res.setdefault("Properties", {})
        for key, value in defaults.items():
            if key == "Environment":
                merged = copy.deepcopy(value.get("Variables", {}))
                merged.update((props.get("Environment") or {}).get("Variables") or {})
                props["Environment"] = {"Variables": merged}
            elif key not in props:
                props[key] = copy.deepcopy(value)


def apply_overrides(template: dict[str, Any], overrides: list[str]) -> None:
    """`--set Logical.Prop.Sub=value` sets a resource property (under Properties)."""
    for item in overrides:
        path, _, raw = item.partition("=")
        parts = path.split(".")
        if len(parts) < 2 or not _:
            raise SystemExit(f"--set {item!r}: expected LogicalId.Property[.Sub...]=value")
        res = template.get("Resources", {}).get(parts[0])
        if res is None:
            raise SystemExit(f"--set {item!r}: no resource {parts[0]} in the template")
        node = res.setdefault("Properties", {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node[parts[-1]] = value


class Stack:
    """The template's parameters, conditions and resources, resolved against moto."""

    def __init__(
        self,
        template: dict[str, Any],
        stack_name: str,
        region: str,
        params: dict[str, str],
        aws: "Aws",
        api_url: Callable[[str], str],
    ) -> None:
        self.t = template
        self.stack_name = stack_name
        self.region = region
        self.aws = aws
        self.api_url = api_url
        self.resources: dict[str, dict[str, Any]] = template.get("Resources", {})
        self.params: dict[str, Any] = {}
        for name, spec in (template.get("Parameters") or {}).items():
            if name in params:
                value: Any = params[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise SystemExit(f"parameter {name} has no default: pass --param {name}=...")
            if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
                value = [v.strip() for v in value.split(",")] if value else []
            elif not isinstance(value, list):
                value = str(value)
            self.params[name] = value
        unknown = set(params) - set(self.params)
        if unknown:
            raise SystemExit(f"--param: the template has no parameter {', '.join(sorted(unknown))}")
        self._conditions: dict[str, bool] = {}
        # logical id -> {"Ref": ..., attribute: ...} once created/named.
        self.physical: dict[str, dict[str, Any]] = {}
        self._creating: set[str] = set()
        self._lock = threading.RLock()

    # -- pseudo parameters and resource attributes

    def pseudo(self, name: str) -> Any:
        return {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{ACCOUNT}:stack/{self.stack_name}/emulated",
            "AWS::NotificationARNs": [],
            "AWS::NoValue": NO_VALUE,
        }[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.params:
            return self.params[name]
        return self.attr(name, "Ref")

    def attr(self, logical: str, attribute: str) -> Any:
        if logical not in self.resources:
            raise SystemExit(f"template refers to {logical}, which is neither a parameter nor a resource")
        with self._lock:
            if logical not in self.physical:
                if logical in self._creating:
                    raise SystemExit(f"circular reference through {logical}")
                self._creating.add(logical)
                try:
                    self.physical[logical] = self._materialise(logical)
                finally:
                    self._creating.discard(logical)
            values = self.physical[logical]
        if attribute in values:
            return values[attribute]
        # Attributes of resources the emulator does not model: stable placeholders.
        return f"arn:aws:emulated:{self.region}:{ACCOUNT}:{logical}/{attribute}"

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            spec = (self.t.get("Conditions") or {}).get(name)
            if spec is None:
                raise SystemExit(f"unknown condition {name}")
            self._conditions[name] = bool(self.resolve(spec))
        return self._conditions[name]

    # -- intrinsic functions

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            out = [self.resolve(v) for v in value]
            return [v for v in out if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                return self._fn(key[4:], arg)
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _fn(self, name: str, arg: Any) -> Any:
        if name == "GetAtt":
            logical, attribute = (arg if isinstance(arg, list) else arg.split(".", 1))[:2]
            return self.attr(self.resolve(logical), self.resolve(attribute))
        if name == "Sub":
            if isinstance(arg, list):
                text, variables = arg[0], {k: self.resolve(v) for k, v in arg[1].items()}
            else:
                text, variables = arg, {}

            def sub(m: re.Match[str]) -> str:
                inner = m.group(1)
                if inner.startswith("!"):
                    return "${" + inner[1:] + "}"
                if inner in variables:
                    return str(variables[inner])
                if "." in inner and not inner.startswith("AWS::"):
                    logical, attribute = inner.split(".", 1)
                    return str(self.attr(logical, attribute))
                return str(self.ref(inner))

            return re.sub(r"\$\{([^}]+)\}", sub, text)
        if name == "If":
            cond, yes, no = arg
            return self.resolve(yes if self.condition(cond) else no)
        if name == "Not":
            return not self.resolve(arg[0])
        if name == "Equals":
            a, b = (self.resolve(x) for x in arg)
            return str(a) == str(b)
        if name == "And":
            return all(self.resolve(x) for x in arg)
        if name == "Or":
            return any(self.resolve(x) for x in arg)
        if name == "Join":
            sep, items = arg
            return str(sep).join(str(x) for x in self.resolve(items))
        if name == "Select":
            index, items = arg
            return self.resolve(items)[int(self.resolve(index))]
        if name == "Split":
            sep, text = arg
            return str(self.resolve(text)).split(sep)
        if name == "FindInMap":
            m, k1, k2 = (self.resolve(x) for x in arg)
            return self.t["Mappings"][m][k1][k2]
        if name == "Base64":
            return base64.b64encode(str(self.resolve(arg)).encode()).decode()
        if name == "GetAZs":
            return [f"{self.region}{z}" for z in "abc"]
        if name == "ToJsonString":
            return json.dumps(self.resolve(arg), separators=(",", ":"))
        raise SystemExit(f"unsupported intrinsic function Fn::{name}")

    # -- resources

    def default_name(self, logical: str) -> str:
        return f"{self.stack_name}-{logical}"

    def _materialise(self, logical: str) -> dict[str, Any]:
        res = self.resources[logical]
        kind = res.get("Type", "")
        props = res.get("Properties") or {}
        if kind == "AWS::SQS::Queue":
            return self.aws.create_queue(self, logical, props)
        if kind == "AWS::DynamoDB::Table":
            return self.aws.create_table(self, logical, props)
        if kind == "AWS::S3::Bucket":
            return self.aws.create_bucket(self, logical, props)
        if kind == "AWS::SecretsManager::Secret":
            return self.aws.create_secret(self, logical, props)
        if kind in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            name = self.resolve(props.get("FunctionName")) or self.default_name(logical)
            arn = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{name}"
            return {"Ref": name, "Arn": arn}
        if kind in ("AWS::Serverless::HttpApi", "AWS::ApiGatewayV2::Api"):
            api_id = hashlib.sha256(f"{self.stack_name}/{logical}".encode()).hexdigest()[:10]
            return {"Ref": api_id, "ApiId": api_id, "ApiEndpoint": self.api_url(logical)}
        # Integrations are referred to by logical id in a route's Target.
        return {"Ref": logical}

    def create_all(self) -> None:
        for logical, res in self.resources.items():
            if res.get("Type") in ("AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::S3::Bucket"):
                self.attr(logical, "Ref")


# --------------------------------------------------------------------------
# moto: the resources and the clients the event sources use.


class Aws:
    def __init__(self, endpoint: str, region: str) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.region = region
        cfg = Config(retries={"max_attempts": 8, "mode": "standard"}, max_pool_connections=64)
        kw = dict(
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=cfg,
        )
        self.sqs = boto3.client("sqs", **kw)
        self.ddb = boto3.client("dynamodb", **kw)
        self.streams = boto3.client("dynamodbstreams", **kw)
        self.s3 = boto3.client("s3", **kw)
        self.secrets = boto3.client("secretsmanager", **kw)

    def queue_url_for_arn(self, arn: str) -> str:
        name = arn.rsplit(":", 1)[-1]
        return self.sqs.get_queue_url(QueueName=name)["QueueUrl"]

    def create_queue(self, stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
        p = stack.resolve(props)
        fifo = str(p.get("FifoQueue", "false")).lower() == "true"
        name = p.get("QueueName") or stack.default_name(logical) + (".fifo" if fifo else "")
        attrs: dict[str, str] = {}
        for key in (
            "DelaySeconds",
            "MaximumMessageSize",
            "MessageRetentionPeriod",
            "ReceiveMessageWaitTimeSeconds",
            "VisibilityTimeout",
            "FifoQueue",
            "ContentBasedDeduplication",
        ):
            if key in p:
                v = p[key]
                attrs[key] = str(v).lower() if isinstance(v, bool) else str(v)
        if "RedrivePolicy" in p:
            rp = p["RedrivePolicy"]
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": rp["deadLetterTargetArn"], "maxReceiveCount": str(rp["maxReceiveCount"])}
            )
        try:
            url = self.sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        except self.sqs.exceptions.QueueNameExists:
            url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            self.sqs.set_queue_attributes(QueueUrl=url, Attributes={k: v for k, v in attrs.items() if k != "FifoQueue"})
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return {"Ref": url, "QueueUrl": url, "Arn": arn, "QueueName": name}

    def create_table(self, stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
        p = stack.resolve(props)
        name = p.get("TableName") or stack.default_name(logical)
        existing = self.ddb.list_tables()["TableNames"]
        if name not in existing:
            kw: dict[str, Any] = {
                "TableName": name,
                "AttributeDefinitions": p["AttributeDefinitions"],
                "KeySchema": p["KeySchema"],
                "BillingMode": p.get("BillingMode", "PROVISIONED"),
            }
            if kw["BillingMode"] != "PAY_PER_REQUEST":
                kw["ProvisionedThroughput"] = p.get(
                    "ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
                )
            for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
                if key in p:
                    kw[key] = p[key]
            if "StreamSpecification" in p:
                kw["StreamSpecification"] = {
                    "StreamEnabled": True,
                    "StreamViewType": p["StreamSpecification"]["StreamViewType"],
                }
            self.ddb.create_table(**kw)
            ttl = p.get("TimeToLiveSpecification")
            if ttl and str(ttl.get("Enabled", "false")).lower() == "true":
                self.ddb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
                )
        desc = self.ddb.describe_table(TableName=name)["Table"]
        out = {"Ref": name, "Arn": desc["TableArn"]}
        if desc.get("LatestStreamArn"):
            out["StreamArn"] = desc["LatestStreamArn"]
        return out

    def create_bucket(self, stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
        p = stack.resolve(props)
        name = p.get("BucketName") or stack.default_name(logical).lower()
        try:
            if self.region == "us-east-1":
                self.s3.create_bucket(Bucket=name)
            else:
                self.s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
        except self.s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        return {
            "Ref": name,
            "Arn": f"arn:aws:s3:::{name}",
            "DomainName": f"{name}.s3.amazonaws.com",
            "RegionalDomainName": f"{name}.s3.{self.region}.amazonaws.com",
        }


    def create_secret(self, stack: Stack, logical: str, props: dict[str, Any]) -> dict[str, Any]:
        """A secret as CloudFormation makes it: the given `SecretString`, or
        one generated as `GenerateSecretString` asks (kept if it exists)."""
        import secrets as random_source
        import string

        p = stack.resolve(props)
        name = p.get("Name") or stack.default_name(logical)
        given = p.get("SecretString")
        if given is None:
            gen = p.get("GenerateSecretString") or {}
            alphabet = string.ascii_letters + string.digits
            if str(gen.get("ExcludePunctuation", "false")).lower() != "true":
                alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
            length = int(gen.get("PasswordLength", 32))
            value = "".join(random_source.choice(alphabet) for _ in range(length))
        else:
            value = str(given)
        try:
            arn = self.secrets.create_secret(Name=name, SecretString=value)["ARN"]
        except self.secrets.exceptions.ResourceExistsException:
            arn = self.secrets.describe_secret(SecretId=name)["ARN"]
            if given is not None:
                self.secrets.put_secret_value(SecretId=arn, SecretString=value)
        return {"Ref": arn, "Id": arn}


# --------------------------------------------------------------------------
# Lambda: function instances, each a process with its own Runtime API.


@dataclass
class Result:
    ok: bool
    body: bytes = b""
    error_type: str | None = None
    error_message: str | None = None
    duration_ms: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    @staticmethod
    def failure(error_type: str, message: str) -> "Result":
        return Result(False, json.dumps({"errorType": error_type, "errorMessage": message}).encode(), error_type, message)


class Invocation:
    def __init__(self, payload: bytes, timeout_s: float, function_arn: str) -> None:
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.deadline = time.time() + timeout_s
        self.function_arn = function_arn
        self.started = time.monotonic()
        self.result: Result | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def finish(self, result: Result) -> bool:
        with self._lock:
            if self.done.is_set():
                return False
            result.duration_ms = (time.monotonic() - self.started) * 1000
            self.result = result
            self.done.set()
            return True


class RuntimeApi(ThreadingHTTPServer):
    """The Runtime API of one process of one instance (a fresh one per process)."""

    daemon_threads = True

    def __init__(self, instance: "Instance", generation: int) -> None:
        self.instance = instance
        self.generation = generation
        super().__init__(("127.0.0.1", 0), RuntimeHandler)


class RuntimeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RuntimeApi

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionResetError, BrokenPipeError):  # the process was killed or replaced
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path != "/2018-06-01/runtime/invocation/next":
            return self._send(404, {"errorMessage": "not found", "errorType": "NotFound"})
        inv = self.server.instance.next_invocation(self.server.generation)
        if inv is None:  # this process is being replaced or the emulator stops
            self.close_connection = True
            return self._send(410, {"errorMessage": "instance replaced", "errorType": "Gone"})
        self._send(
            200,
            inv.payload,
            {
                "Lambda-Runtime-Aws-Request-Id": inv.id,
                "Lambda-Runtime-Deadline-Ms": str(int(inv.deadline * 1000)),
                "Lambda-Runtime-Invoked-Function-Arn": inv.function_arn,
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0",
            },
        )

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        inst = self.server.instance
        parts = self.path.split("/")
        # /2018-06-01/runtime/init/error, /2018-06-01/runtime/invocation/{id}/(response|error)
        if self.path == "/2018-06-01/runtime/init/error":
            body = self._body()
            inst.init_failed(self.server.generation, body)
            return self._send(202, {"status": "OK"})
        if len(parts) == 6 and parts[1:4] == ["2018-06-01", "runtime", "invocation"] and parts[5] in ("response", "error"):
            request_id, kind = parts[4], parts[5]
            length = int(self.headers.get("Content-Length") or 0)
            if kind == "response" and length > SYNC_PAYLOAD_LIMIT:
                self.rfile.read(length)
                inst.complete(
                    self.server.generation,
                    request_id,
                    Result.failure(
                        "Function.ResponseSizeTooLarge",
                        f"Response payload size ({length} bytes) exceeded maximum allowed payload size ({SYNC_PAYLOAD_LIMIT} bytes).",
                    ),
                )
                return self._send(
                    413,
                    {"errorMessage": "Exceeded maximum allowed payload size", "errorType": "RequestEntityTooLarge"},
                )
            body = self.rfile.read(length) if length else b""
            if kind == "response":
                result = Result(True, body)
            else:
                try:
                    err = json.loads(body) if body else {}
                except ValueError:
                    err = {}
                err = err if isinstance(err, dict) else {}
                result = Result(
                    False,
                    body,
                    str(err.get("errorType") or self.headers.get("Lambda-Runtime-Function-Error-Type") or "Unhandled"),
                    str(err.get("errorMessage") or ""),
                )
            if not inst.complete(self.server.generation, request_id, result):
                return self._send(400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"})
            return self._send(202, {"status": "OK"})
        self._send(404, {"errorMessage": "not found", "errorType": "NotFound"})


class Instance:
    """One execution environment of a function: at most one process at a time."""

    def __init__(self, fn: "Function", number: int) -> None:
        self.fn = fn
        self.number = number
        self.cond = threading.Condition()
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.api: RuntimeApi | None = None
        self.alive = False
        self.ready = False  # the current process asked for an invocation
        self.init_error: str | None = None
        self.pending: Invocation | None = None
        self.current: Invocation | None = None
        self.invocations = 0
        self.busy = False

    # -- process lifetime

    def start(self) -> None:
        with self.cond:
            self.generation += 1
            gen = self.generation
            self.ready, self.init_error, self.alive = False, None, True
        api = RuntimeApi(self, gen)
        threading.Thread(target=api.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        env = dict(self.fn.env)
        env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{api.server_address[1]}"
        env["AWS_LAMBDA_LOG_STREAM_NAME"] = f"{dt.date.today():%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        proc = subprocess.Popen(
            [str(self.fn.binary)],
            env=env,
            cwd=str(self.fn.binary.parent),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        with self.cond:
            old_api, self.api, self.proc = self.api, api, proc
        if old_api is not None:
            threading.Thread(target=old_api.shutdown, daemon=True).start()
        self.fn.log_line(f"[{self.number}] INIT_START pid {proc.pid}")
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()
        threading.Thread(target=self._watch, args=(proc, gen), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.fn.log_line(f"[{self.number}] " + raw.decode("utf-8", "replace").rstrip("\n"))

    def _watch(self, proc: subprocess.Popen[bytes], gen: int) -> None:
        rc = proc.wait()
        with self.cond:
            if gen != self.generation:
                return
            self.alive = False
            inv, self.current = self.current, None
            if not self.ready and self.init_error is None:
                self.init_error = f"the process exited with status {rc} before asking for an invocation"
            self.cond.notify_all()
        self.fn.log_line(f"[{self.number}] process {proc.pid} exited with status {rc}")
        if inv is not None:
            inv.finish(Result.failure("Runtime.ExitError", f"RequestId: {inv.id} Error: Runtime exited with error: exit status {rc}"))
            self.fn.stats["crashes"] += 1

    def kill(self) -> None:
        with self.cond:
            proc, self.alive = self.proc, False
            self.generation += 1  # the watcher of the killed process stands down
            self.ready = False
            self.cond.notify_all()
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def stop(self) -> None:
        # The process goes first: answering its pending `next` instead would
        # make the runtime fail on an answer without an invocation.
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        with self.cond:
            self.generation += 1
            self.alive = False
            self.cond.notify_all()
        if self.api is not None:
            self.api.shutdown()

    def init_failed(self, gen: int, body: bytes) -> None:
        with self.cond:
            if gen != self.generation:
                return
            try:
                err = json.loads(body)
                self.init_error = f"{err.get('errorType')}: {err.get('errorMessage')}"
            except (ValueError, AttributeError):
                self.init_error = body.decode("utf-8", "replace")[:500] or "init error"
            self.cond.notify_all()

    def wait_ready(self, timeout: float) -> str | None:
        """Starts the process if needed and waits until it asks for work; an error message if it cannot."""
        if not self.alive:
            try:
                self.start()
            except OSError as e:
                with self.cond:
                    self.alive = False
                return f"cannot start {self.fn.binary}: {e}"
        end = time.monotonic() + timeout
        with self.cond:
            while not self.ready and self.init_error is None and self.alive:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.ready:
                return None
            error = self.init_error or (
                f"no invocation request within {timeout:.0f} s of start" if self.alive else "the process exited"
            )
        self.kill()
        return error

    # -- Runtime API side

    def next_invocation(self, gen: int) -> Invocation | None:
        with self.cond:
            while True:
                if gen != self.generation:  # the process was replaced or stopped
                    return None
                if not self.ready:
                    self.ready = True
                    self.cond.notify_all()
                if self.pending is not None:
                    inv, self.pending = self.pending, None
                    self.current = inv
                    return inv
                self.cond.wait(1.0)

    def complete(self, gen: int, request_id: str, result: Result) -> bool:
        with self.cond:
            if gen != self.generation or self.current is None or self.current.id != request_id:
                return False
            inv, self.current = self.current, None
        inv.finish(result)
        return True

    # -- invoking

    def invoke(self, payload: bytes) -> Result:
        self.invocations += 1
        err = self.wait_ready(INIT_TIMEOUT_S)
        if err is not None:
            self.fn.stats["init_errors"] += 1
            self.fn.log_line(f"[{self.number}] INIT_REPORT failed: {err}")
            return Result.failure("Runtime.InitError", err)
        inv = Invocation(payload, self.fn.timeout_s, self.fn.arn)
        self.fn.log_line(f"[{self.number}] START RequestId: {inv.id} Version: $LATEST")
        with self.cond:
            self.pending = inv
            self.cond.notify_all()
        if not inv.done.wait(max(0.0, inv.deadline - time.time())):
            if inv.finish(Result.failure("Sandbox.Timedout", f"RequestId: {inv.id} Error: Task timed out after {self.fn.timeout_s:.2f} seconds")):
                self.fn.stats["timeouts"] += 1
                self.fn.log_line(f"[{self.number}] {inv.id} Task timed out after {self.fn.timeout_s:.2f} seconds")
                with self.cond:
                    self.pending = None
                    self.current = None
                self.kill()
        result = inv.result
        assert result is not None
        self.fn.log_line(f"[{self.number}] END RequestId: {inv.id}")
        self.fn.log_line(
            f"[{self.number}] REPORT RequestId: {inv.id} Duration: {result.duration_ms:.2f} ms "
            f"Memory Size: {self.fn.memory_mb} MB (not enforced)"
            + ("" if result.ok else f" Status: {result.error_type}")
        )
        return result


class Function:
    def __init__(self, emulator: "Emulator", logical: str, name: str, arn: str, binary: Path, env: dict[str, str], timeout_s: float, memory_mb: int, props: dict[str, Any]) -> None:
        self.emulator = emulator
        self.logical = logical
        self.name = name
        self.arn = arn
        self.binary = binary
        self.env = env
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.props = props
        self.capacity = 1
        self.instances: list[Instance] = []
        self.idle: list[Instance] = []
        self.cond = threading.Condition()
        self.stats = {"invocations": 0, "errors": 0, "timeouts": 0, "crashes": 0, "init_errors": 0}
        self._log_lock = threading.Lock()
        self._log = open(emulator.log_dir / f"{logical}.log", "a", encoding="utf-8", buffering=1)

    def log_line(self, line: str) -> None:
        with self._log_lock:
            if not self._log.closed:
                self._log.write(f"{now_iso()} {line}\n")

    def acquire(self, timeout: float | None = None) -> Instance | None:
        end = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.idle:
                    inst = self.idle.pop()
                    inst.busy = True
                    return inst
                if len(self.instances) < self.capacity:
                    inst = Instance(self, len(self.instances) + 1)
                    self.instances.append(inst)
                    inst.busy = True
                    return inst
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self.cond.wait(left if left is not None else 1.0)

    def release(self, inst: Instance) -> None:
        with self.cond:
            inst.busy = False
            self.idle.append(inst)
            self.cond.notify()

    def invoke(self, event: Any) -> Result:
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        if len(payload) > SYNC_PAYLOAD_LIMIT:
            return Result.failure("RequestTooLargeException", f"Request must be smaller than {SYNC_PAYLOAD_LIMIT} bytes for the Invoke operation")
        inst = self.acquire()
        assert inst is not None
        try:
            self.stats["invocations"] += 1
            result = inst.invoke(payload)
            if not result.ok:
                self.stats["errors"] += 1
            return result
        finally:
            self.release(inst)

    def invoke_async(self, event: Any) -> "Future":
        fut = Future()
        threading.Thread(target=lambda: fut.set(self.invoke(event)), daemon=True).start()
        return fut

    def describe(self) -> dict[str, Any]:
        with self.cond:
            instances = [
                {
                    "number": i.number,
                    "pid": i.proc.pid if i.proc is not None and i.alive else None,
                    "busy": i.busy,
                    "invocations": i.invocations,
                }
                for i in self.instances
            ]
        return {"name": self.name, "arn": self.arn, "capacity": self.capacity, "instances": instances, **self.stats}

    def stop(self) -> None:
        for inst in list(self.instances):
            inst.stop()
        with self._log_lock:
            self._log.close()


class Future:
    def __init__(self) -> None:
        self._done = threading.Event()
        self.result: Result | None = None

    def set(self, result: Result) -> None:
        self.result = result
        self._done.set()

    def wait(self, timeout: float) -> Result | None:
        return self.result if self._done.wait(timeout) else None


# --------------------------------------------------------------------------
# Lambda event filtering: the EventBridge pattern subset Lambda accepts.

_MISSING = object()


def pattern_matches(pattern: dict[str, Any], event: Any) -> bool:
    for key, rule in pattern.items():
        if key == "$or":
            if not any(pattern_matches(p, event) for p in rule):
                return False
            continue
        value = event.get(key, _MISSING) if isinstance(event, dict) else _MISSING
        if isinstance(rule, dict):
            # A missing parent behaves as an object with no fields, so that
            # {"exists": false} below it matches.
            if not pattern_matches(rule, value if isinstance(value, dict) else {}):
                return False
        elif isinstance(rule, list):
            if not _value_matches(rule, value):
                return False
        else:
            raise ValueError(f"filter pattern: {key} must map to a list or an object")
    return True


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _numeric(conditions: list[Any], v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    ops = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "=": lambda a, b: a == b,
           ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
    for op, n in zip(conditions[::2], conditions[1::2]):
        if not ops[op](float(v), float(n)):
            return False
    return True


def _value_matches(rules: list[Any], value: Any) -> bool:
    present = value is not _MISSING
    values = value if isinstance(value, list) else [value]
    for r in rules:
        if isinstance(r, dict):
            if "exists" in r:
                if bool(r["exists"]) == present:
                    return True
                continue
            if not present:
                continue
            if "prefix" in r and any(isinstance(v, str) and v.startswith(r["prefix"]) for v in values):
                return True
            if "suffix" in r and any(isinstance(v, str) and v.endswith(r["suffix"]) for v in values):
                return True
            if "equals-ignore-case" in r and any(isinstance(v, str) and v.lower() == r["equals-ignore-case"].lower() for v in values):
                return True
            if "numeric" in r and any(_numeric(r["numeric"], v) for v in values):
                return True
            if "anything-but" in r:
                ab = r["anything-but"]
                if isinstance(ab, dict) and "prefix" in ab:
                    if all(not (isinstance(v, str) and v.startswith(ab["prefix"])) for v in values):
                        return True
                else:
                    banned = ab if isinstance(ab, list) else [ab]
                    if all(not any(_equal(v, b) for b in banned) for v in values):
                        return True
        elif present and any(_equal(v, r) for v in values):
            return True
    return False


_OPERATORS = {"exists", "prefix", "suffix", "equals-ignore-case", "numeric", "anything-but"}


def _check_pattern(pattern: Any, where: str = "") -> None:
    if not isinstance(pattern, dict):
        raise ValueError(f"filter pattern{where}: expected an object")
    for key, rule in pattern.items():
        if key == "$or":
            for p in rule:
                _check_pattern(p, where)
        elif isinstance(rule, dict):
            _check_pattern(rule, f"{where}.{key}")
        elif isinstance(rule, list):
            for r in rule:
                if isinstance(r, dict) and not set(r) <= _OPERATORS:
                    raise ValueError(f"filter pattern{where}.{key}: unsupported operator {sorted(set(r) - _OPERATORS)}")
        else:
            raise ValueError(f"filter pattern{where}.{key}: must map to a list or an object")


def compile_filters(spec: Any) -> list[dict[str, Any]]:
    """`FilterCriteria.Filters[].Pattern` (JSON strings) as patterns; empty = everything passes."""
    patterns = []
    for f in (spec or {}).get("Filters", []) or []:
        raw = f.get("Pattern")
        pattern = json.loads(raw) if isinstance(raw, str) else raw
        _check_pattern(pattern)
        patterns.append(pattern)
    return patterns


def passes(patterns: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    return not patterns or any(pattern_matches(p, record) for p in patterns)


# --------------------------------------------------------------------------
# Event sources.


class SqsSource:
    """An SQS event source mapping: pollers, batches, partial batch responses."""

    def __init__(self, emulator: "Emulator", fn: Function, label: str, queue_arn: str, props: dict[str, Any], concurrency: int) -> None:
        self.emu = emulator
        self.fn = fn
        self.label = label
        self.queue_arn = queue_arn
        self.queue_url = emulator.aws.queue_url_for_arn(queue_arn)
        self.batch_size = int(props.get("BatchSize", 10))
        self.window_s = float(props.get("MaximumBatchingWindowInSeconds", 0))
        self.partial = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        self.filters = compile_filters(props.get("FilterCriteria"))
        cap = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
        self.pollers = max(1, min(concurrency, int(cap))) if cap else max(1, concurrency)
        self.enabled = threading.Event()
        if str(props.get("Enabled", "true")).lower() != "false":
            self.enabled.set()
        self.stats = {"batches": 0, "messages": 0, "deleted": 0, "returned": 0, "filtered": 0}
        self._lock = threading.Lock()

    def start(self) -> None:
        for i in range(self.pollers):
            threading.Thread(target=self._run, name=f"sqs-{self.label}-{i}", daemon=True).start()

    def _receive(self, n: int) -> list[dict[str, Any]]:
        out = self.emu.aws.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(10, n)),
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        return out.get("Messages", [])

    def _run(self) -> None:
        idle = 0.05
        while not self.emu.stopping.is_set():
            if not self.enabled.wait(0.5):
                continue
            try:
                batch: list[dict[str, Any]] = []
                window_end: float | None = None
                while len(batch) < self.batch_size and not self.emu.stopping.is_set():
                    got = self._receive(self.batch_size - len(batch))
                    if got:
                        batch.extend(got)
                        if window_end is None:
                            window_end = time.monotonic() + self.window_s
                    if len(batch) >= self.batch_size or (batch and time.monotonic() >= (window_end or 0)):
                        break
                    if not got:
                        if not batch:
                            break
                        time.sleep(min(0.1, max(0.0, (window_end or 0) - time.monotonic())))
                if not batch:
                    # Long polling, on this side (see the module's docstring).
                    self.emu.stopping.wait(idle)
                    idle = min(idle * 2, 1.0)
                    continue
                idle = 0.05
                self._handle(batch)
            except Exception:  # keep polling, as Lambda does, and say why
                self.fn.log_line(f"[poller {self.label}] {traceback.format_exc()}")
                self.emu.stopping.wait(1.0)

    def _record(self, m: dict[str, Any]) -> dict[str, Any]:
        attrs = {}
        for name, a in (m.get("MessageAttributes") or {}).items():
            attrs[name] = {
                "stringValue": a.get("StringValue"),
                "binaryValue": base64.b64encode(a["BinaryValue"]).decode() if "BinaryValue" in a else None,
                "stringListValues": a.get("StringListValues", []),
                "binaryListValues": [base64.b64encode(b).decode() for b in a.get("BinaryListValues", [])],
                "dataType": a.get("DataType"),
            }
        rec = {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m.get("Body", ""),
            "attributes": m.get("Attributes", {}),
            "messageAttributes": attrs,
            "md5OfBody": m.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.emu.region,
        }
        if m.get("MD5OfMessageAttributes"):
            rec["md5OfMessageAttributes"] = m["MD5OfMessageAttributes"]
        return rec

    def _filter_view(self, rec: dict[str, Any]) -> dict[str, Any]:
        view = dict(rec)
        try:
            view["body"] = json.loads(rec["body"])
        except (ValueError, TypeError):
            pass
        return view

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for i in range(0, len(records), 10):
            chunk = records[i : i + 10]
            self.emu.aws.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(j), "ReceiptHandle": r["receiptHandle"]} for j, r in enumerate(chunk)],
            )
        with self._lock:
            self.stats["deleted"] += len(records)

    def _handle(self, messages: list[dict[str, Any]]) -> None:
        records = [self._record(m) for m in messages]
        if self.filters:
            # Lambda deletes the messages its filters leave out.
            dropped = [r for r in records if not passes(self.filters, self._filter_view(r))]
            if dropped:
                self._delete(dropped)
                with self._lock:
                    self.stats["filtered"] += len(dropped)
            records = [r for r in records if passes(self.filters, self._filter_view(r))]
            if not records:
                return
        with self._lock:
            self.stats["batches"] += 1
            self.stats["messages"] += len(records)
        result = self.fn.invoke({"Records": records})
        if not result.ok:
            # A failed invocation deletes nothing: every message comes back
            # after its visibility timeout.
            with self._lock:
                self.stats["returned"] += len(records)
            return
        failed = self._failures(result, records)
        keep = [r for r in records if r["messageId"] not in failed]
        if keep:
            self._delete(keep)
        with self._lock:
            self.stats["returned"] += len(records) - len(keep)

    def _failures(self, result: Result, records: list[dict[str, Any]]) -> set[str]:
        """IDs to leave on the queue; every ID when the response is not a valid partial batch response."""
        if not self.partial:
            return set()
        everything = {r["messageId"] for r in records}
        try:
            body = result.json()
        except ValueError:
            return set()
        if not isinstance(body, dict) or not body.get("batchItemFailures"):
            return set()
        failures = body["batchItemFailures"]
        if not isinstance(failures, list):
            return everything
        ids = set()
        for f in failures:
            ident = f.get("itemIdentifier") if isinstance(f, dict) else None
            if not isinstance(ident, str) or ident not in everything:
                self.fn.log_line(f"[poller {self.label}] invalid batchItemFailures entry {f!r}: the whole batch fails")
                return everything
            ids.add(ident)
        return ids


def _plain(value: Any) -> Any:
    """boto3's parsed stream record back to the JSON of the wire (bytes as base64, times as seconds)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.datetime):
        return int(value.timestamp())
    if isinstance(value, set):
        return [_plain(v) for v in sorted(value)]
    return value


class StreamSource:
    """A DynamoDB stream event source mapping: one reader per shard.

    Each poll takes a fresh shard iterator after the last sequence number
    handled (TRIM_HORIZON the first time), and skips any record at or below
    it: no iterator lives across polls.
    """

    def __init__(self, emulator: "Emulator", fn: Function, label: str, stream_arn: str, props: dict[str, Any]) -> None:
        self.emu = emulator
        self.fn = fn
        self.label = label
        self.stream_arn = stream_arn
        self.batch_size = int(props.get("BatchSize", 100))
        self.window_s = float(props.get("MaximumBatchingWindowInSeconds", 0))
        self.partial = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        self.max_retries = int(props.get("MaximumRetryAttempts", -1))
        self.bisect = str(props.get("BisectBatchOnFunctionError", "false")).lower() == "true"
        self.starting = str(props.get("StartingPosition", "TRIM_HORIZON")).upper()
        dest = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        self.on_failure_url = emulator.aws.queue_url_for_arn(dest) if dest else None
        self.filters = compile_filters(props.get("FilterCriteria"))
        self.cursor: dict[str, int] = {}  # shard -> last sequence number handled
        self._shard_ids: list[str] = []
        self._shards_read_at = 0.0
        self.enabled = threading.Event()
        if str(props.get("Enabled", "true")).lower() != "false":
            self.enabled.set()
        self.stats = {"records": 0, "filtered": 0, "batches": 0, "retries": 0, "discarded": 0}

    def start(self) -> None:
        if self.starting == "LATEST":
            # Everything already in the stream counts as handled.
            for shard in self._shards():
                last = None
                while True:
                    page = self._read(shard, last)
                    if not page:
                        break
                    last = int(page[-1]["dynamodb"]["SequenceNumber"])
                if last is not None:
                    self.cursor[shard] = last
        threading.Thread(target=self._run, name=f"stream-{self.label}", daemon=True).start()

    def _shards(self) -> list[str]:
        # Shards change rarely (moto keeps one per table): described every few seconds.
        if time.monotonic() - self._shards_read_at > 5:
            desc = self.emu.aws.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]
            self._shard_ids = [s["ShardId"] for s in desc.get("Shards", [])]
            self._shards_read_at = time.monotonic()
        return self._shard_ids

    def _read(self, shard: str, after: int | None) -> list[dict[str, Any]]:
        """The records after `after` (from TRIM_HORIZON when None), up to ten batches' worth."""
        kw: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard}
        if after is None:
            kw["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            kw["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kw["SequenceNumber"] = str(after)
        it = self.emu.aws.streams.get_shard_iterator(**kw)["ShardIterator"]
        records: list[dict[str, Any]] = []
        while it and not self.emu.stopping.is_set():
            page = self.emu.aws.streams.get_records(ShardIterator=it, Limit=1000)
            got = page.get("Records", [])
            if not got:
                break
            records.extend(got)
            it = page.get("NextShardIterator")
            if len(records) >= 10 * self.batch_size:
                break
        return records

    def _run(self) -> None:
        while not self.emu.stopping.is_set():
            if not self.enabled.wait(0.5):
                continue
            try:
                backlog = False
                for shard in self._shards():
                    backlog |= self._poll_shard(shard)
                if not backlog:
                    self.emu.stopping.wait(0.25)  # Lambda polls a shard four times a second
            except Exception:
                self.fn.log_line(f"[stream {self.label}] {traceback.format_exc()}")
                self.emu.stopping.wait(1.0)

    def _poll_shard(self, shard: str) -> bool:
        """Handles the shard's new records; True when more are waiting (a full read)."""
        last = self.cursor.get(shard)
        raw = self._read(shard, last)
        fresh = [r for r in raw if last is None or int(r["dynamodb"]["SequenceNumber"]) > last]
        if not fresh:
            return False
        records = []
        for r in fresh:
            rec = _plain(r)
            rec["eventSourceARN"] = self.stream_arn
            records.append(rec)
        self.stats["records"] += len(records)
        selected = [r for r in records if passes(self.filters, r)]
        self.stats["filtered"] += len(records) - len(selected)
        if self.window_s > 0 and len(selected) < self.batch_size:
            time.sleep(self.window_s)  # the batching window; the rest is read on the next poll
        for i in range(0, len(selected), self.batch_size):
            self._deliver(shard, selected[i : i + self.batch_size])
            if self.emu.stopping.is_set():
                return True
        self.cursor[shard] = int(records[-1]["dynamodb"]["SequenceNumber"])
        return len(raw) >= 10 * self.batch_size

    def _deliver(self, shard: str, batch: list[dict[str, Any]], attempts: int = 0) -> None:
        """Invokes until the batch succeeds, its retries run out, or it is bisected."""
        while batch and not self.emu.stopping.is_set():
            self.stats["batches"] += 1
            result = self.fn.invoke({"Records": batch})
            if result.ok:
                first_failed = self._first_failure(result, batch)
                if first_failed is None:
                    return
                # Lambda checkpoints before the lowest failed sequence number and retries from it.
                batch = [r for r in batch if int(r["dynamodb"]["SequenceNumber"]) >= first_failed]
                error = "batch item failures"
            else:
                if self.bisect and len(batch) > 1:
                    half = len(batch) // 2
                    self._deliver(shard, batch[:half], attempts + 1)
                    self._deliver(shard, batch[half:], attempts + 1)
                    return
                error = result.error_type or "Unhandled"
            attempts += 1
            if self.max_retries >= 0 and attempts > self.max_retries:
                self._discard(shard, batch, attempts, error, result)
                return
            self.stats["retries"] += 1
            self.emu.stopping.wait(min(0.25 * 2 ** min(attempts, 6), 8.0))

    def _first_failure(self, result: Result, batch: list[dict[str, Any]]) -> int | None:
        if not self.partial:
            return None
        try:
            body = result.json()
        except ValueError:
            return None
        if not isinstance(body, dict) or not body.get("batchItemFailures"):
            return None
        seqs = {r["dynamodb"]["SequenceNumber"] for r in batch}
        failed = []
        for f in body["batchItemFailures"]:
            ident = f.get("itemIdentifier") if isinstance(f, dict) else None
            if not isinstance(ident, str) or ident not in seqs:
                return int(batch[0]["dynamodb"]["SequenceNumber"])  # invalid: the whole batch
            failed.append(int(ident))
        return min(failed)

    def _discard(self, shard: str, batch: list[dict[str, Any]], attempts: int, error: str, result: Result) -> None:
        self.stats["discarded"] += len(batch)
        self.fn.log_line(f"[stream {self.label}] gave up on {len(batch)} record(s) after {attempts} attempt(s): {error}")
        if self.on_failure_url is None:
            return
        created = [r["dynamodb"].get("ApproximateCreationDateTime", time.time()) for r in batch]
        iso = lambda t: dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
        record = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": self.fn.arn,
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "" if result.ok else "Unhandled",
            },
            "version": "1.0",
            "timestamp": now_iso(),
            "DDBStreamBatchInfo": {
                "shardId": shard,
                "startSequenceNumber": batch[0]["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": batch[-1]["dynamodb"]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": iso(created[0]),
                "approximateArrivalOfLastRecord": iso(created[-1]),
                "batchSize": len(batch),
                "streamArn": self.stream_arn,
            },
        }
        self.emu.aws.sqs.send_message(QueueUrl=self.on_failure_url, MessageBody=json.dumps(record))


class S3Source:
    """S3 notifications of one bucket, through moto: the bucket notifies an
    SQS queue of the emulator's, and each event becomes an asynchronous
    invocation (retried twice on error, as Lambda does, with short delays)."""

    def __init__(self, emulator: "Emulator", bucket: str) -> None:
        self.emu = emulator
        self.bucket = bucket
        self.routes: list[tuple[str, Function, int]] = []  # (queue url, function, retries)
        self.configs: list[dict[str, Any]] = []
        self.stats = {"events": 0, "invocations": 0, "failed": 0}

    def add(self, fn: Function, label: str, props: dict[str, Any]) -> None:
        name = f"{self.emu.stack.stack_name}-s3-{fn.logical}-{label}"[:80]
        url = self.emu.aws.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.emu.aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events = props.get("Events")
        cfg: dict[str, Any] = {"Id": f"{fn.logical}-{label}", "QueueArn": arn, "Events": events if isinstance(events, list) else [events]}
        rules = ((props.get("Filter") or {}).get("S3Key") or {}).get("Rules")
        if rules:
            cfg["Filter"] = {"Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}}
        self.configs.append(cfg)
        retries = int((fn.props.get("EventInvokeConfig") or {}).get("MaximumRetryAttempts", 2))
        self.routes.append((url, fn, retries))

    def start(self) -> None:
        self.emu.aws.s3.put_bucket_notification_configuration(
            Bucket=self.bucket, NotificationConfiguration={"QueueConfigurations": self.configs}
        )
        for url, fn, retries in self.routes:
            threading.Thread(target=self._run, args=(url, fn, retries), name=f"s3-{fn.logical}", daemon=True).start()

    def _run(self, url: str, fn: Function, retries: int) -> None:
        idle = 0.1
        while not self.emu.stopping.is_set():
            try:
                got = self.emu.aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
                if not got:
                    self.emu.stopping.wait(idle)
                    idle = min(idle * 2, 1.0)
                    continue
                idle = 0.1
                for m in got:
                    event = json.loads(m["Body"])
                    if "Records" in event:
                        self.stats["events"] += 1
                        self._invoke(fn, self._complete(event), retries)
                    self.emu.aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            except Exception:
                fn.log_line(f"[s3 {self.bucket}] {traceback.format_exc()}")
                self.emu.stopping.wait(1.0)

    def _complete(self, event: dict[str, Any]) -> dict[str, Any]:
        """moto's event, with the fields S3 adds that moto leaves out."""
        for rec in event["Records"]:
            rec.setdefault("userIdentity", {"principalId": "EMULATED"})
            rec.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
            rec.setdefault("responseElements", {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": uuid.uuid4().hex})
            s3 = rec.setdefault("s3", {})
            s3.setdefault("bucket", {}).setdefault("ownerIdentity", {"principalId": "EMULATED"})
            obj = s3.setdefault("object", {})
            obj.setdefault("sequencer", f"{time.time_ns():016X}")
            try:
                t = dt.datetime.strptime(rec["eventTime"], "%Y-%m-%dT%H:%M:%S.%f")
                rec["eventTime"] = t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
            except (KeyError, ValueError):
                rec["eventTime"] = now_iso()
        return event

    def _invoke(self, fn: Function, event: dict[str, Any], retries: int) -> None:
        for attempt in range(retries + 1):
            self.stats["invocations"] += 1
            result = fn.invoke(event)
            if result.ok:
                return
            # Lambda waits a minute, then two, between the retries of an asynchronous invocation.
            self.emu.stopping.wait(self.emu.async_retry_delay_s * (attempt + 1))
        self.stats["failed"] += 1
        fn.log_line(f"[s3 {self.bucket}] asynchronous invocation failed {retries + 1} time(s); the event is dropped")


# --------------------------------------------------------------------------
# API Gateway HTTP API.

TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|javascript|xml|x-www-form-urlencoded|csv|yaml|x-yaml|graphql)|.*\+(json|xml))$",
    re.IGNORECASE,
)


@dataclass
class Route:
    key: str  # "GET /v1/requests/{id}" or "$default"
    fn: Function
    timeout_s: float
    payload_version: str = "2.0"
    method: str = ""
    segments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key != "$default":
            method, _, path = self.key.partition(" ")
            self.method = method.upper()
            self.segments = path.strip("/").split("/") if path.strip("/") else []

    def match(self, method: str, path: str) -> tuple[int, dict[str, str]] | None:
        """(specificity, path parameters) when this route takes the request."""
        if self.key == "$default":
            return (0, {})
        if self.method not in ("ANY", method):
            return None
        parts = path.strip("/").split("/") if path.strip("/") else []
        if path != "/" and path.endswith("/") and not (self.segments and self.segments[-1].endswith("+}")):
            return None
        params: dict[str, str] = {}
        score = 0
        for i, seg in enumerate(self.segments):
            if seg.startswith("{") and seg.endswith("+}"):
                if i >= len(parts):
                    return None
                params[seg[1:-2]] = urllib.parse.unquote("/".join(parts[i:]))
                return (score * 4 + 1, params) if i == len(self.segments) - 1 else None
            if i >= len(parts):
                return None
            if seg.startswith("{") and seg.endswith("}"):
                if not parts[i]:
                    return None
                params[seg[1:-1]] = urllib.parse.unquote(parts[i])
                score = score * 4 + 2
            elif seg == parts[i]:
                score = score * 4 + 3
            else:
                return None
        if len(parts) != len(self.segments):
            return None
        return (score * 4 + 3 + (1 if self.method != "ANY" else 0), params)


class HttpApi:
    def __init__(self, emulator: "Emulator", logical: str, api_id: str) -> None:
        self.emu = emulator
        self.logical = logical
        self.api_id = api_id
        self.routes: list[Route] = []
        self.server: ThreadingHTTPServer | None = None
        self.stats = {"requests": 0, "not_found": 0, "5xx": 0}

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def find(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        best = None
        for r in self.routes:
            m = r.match(method, path)
            if m is not None and (best is None or m[0] > best[0][0]):
                best = (m, r)
        if best is None:
            return None
        return best[1], best[0][1]

    def listen(self, port: int) -> None:
        api = self

        class Handler(GatewayHandler):
            gateway = api

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gateway: HttpApi

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, request_id: str) -> None:
        self.send_response(status)
        names = set()
        for k, v in headers:
            if k.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            names.add(k.lower())
            self.send_header(k, v)
        if "content-type" not in names and body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Apigw-Requestid", request_id)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if status >= 500:
            self.gateway.stats["5xx"] += 1

    def _message(self, status: int, message: str, request_id: str) -> None:
        self._reply(status, [("Content-Type", "application/json")], json.dumps({"message": message}).encode(), request_id)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > HTTP_API_BODY_LIMIT:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        if n > HTTP_API_BODY_LIMIT:
            # Read what was sent (up to a bound) so that the client gets the 413, not a reset.
            left = n if n <= 8 * HTTP_API_BODY_LIMIT else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            return None
        return self.rfile.read(n) if n else b""

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionResetError, BrokenPipeError):
            self.close_connection = True

    def _any(self) -> None:
        gw = self.gateway
        gw.stats["requests"] += 1
        request_id = base64.b32encode(uuid.uuid4().bytes[:10]).decode().rstrip("=")
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return self._message(413, "Request Entity Too Large", request_id)
        split = urllib.parse.urlsplit(self.path)
        raw_path, raw_query = split.path or "/", split.query
        found = gw.find(self.command, raw_path)
        if found is None:
            gw.stats["not_found"] += 1
            return self._message(404, "Not Found", request_id)
        route, params = found
        event = self._event(route, params, raw_path, raw_query, body, request_id)
        fut = route.fn.invoke_async(event)
        result = fut.wait(route.timeout_s)
        if result is None:
            return self._message(503, "Service Unavailable", request_id)
        if not result.ok:
            if result.error_type == "Function.ResponseSizeTooLarge":
                return self._message(502, "Internal Server Error", request_id)
            if result.error_type == "RequestTooLargeException":
                return self._message(413, "Request Entity Too Large", request_id)
            return self._message(500, "Internal Server Error", request_id)
        try:
            status, headers, out = self._response(result.json())
        except (ValueError, TypeError, KeyError, AttributeError):
            return self._message(500, "Internal Server Error", request_id)
        self._reply(status, headers, out, request_id)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any  # noqa: N815

    def _event(self, route: Route, params: dict[str, str], raw_path: str, raw_query: str, body: bytes, request_id: str) -> dict[str, Any]:
        headers: dict[str, str] = {}
        cookies: list[str] = []
        for k, v in self.headers.items():
            k = k.lower()
            if k == "cookie":
                cookies.extend(c.strip() for c in v.split(";") if c.strip())
                continue
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        headers.setdefault("x-forwarded-for", self.client_address[0])
        headers.setdefault("x-forwarded-proto", "http")
        headers.setdefault("x-forwarded-port", str(self.server.server_address[1]))
        query: dict[str, str] = {}
        for k, v in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
            query[k] = f"{query[k]},{v}" if k in query else v
        ctype = (headers.get("content-type") or "").split(";")[0].strip()
        encoding = headers.get("content-encoding")
        binary = bool(body) and (encoding is not None or not TEXT_TYPES.match(ctype or "application/octet-stream"))
        now = time.time()
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route.key,
            "rawPath": raw_path,
            "rawQueryString": raw_query,
            "headers": headers,
            "requestContext": {
                "accountId": ACCOUNT,
                "apiId": self.gateway.api_id,
                "domainName": headers.get("host", "127.0.0.1"),
                "domainPrefix": (headers.get("host", "127.0.0.1").split(".")[0]),
                "http": {
                    "method": self.command,
                    "path": raw_path,
                    "protocol": self.request_version,
                    "sourceIp": self.client_address[0],
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": request_id,
                "routeKey": route.key,
                "stage": "$default",
                "time": dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now * 1000),
            },
            "isBase64Encoded": binary,
        }
        if cookies:
            event["cookies"] = cookies
        if query:
            event["queryStringParameters"] = query
        if params:
            event["pathParameters"] = params
        if body:
            event["body"] = base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")
        return event

    @staticmethod
    def _response(payload: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        """Payload format 2.0: a response object, or any JSON as a 200 application/json body."""
        if not isinstance(payload, dict) or "statusCode" not in payload:
            return 200, [("Content-Type", "application/json")], json.dumps(payload).encode()
        status = int(payload["statusCode"])
        headers = [(k, str(v)) for k, v in (payload.get("headers") or {}).items()]
        for k, vs in (payload.get("multiValueHeaders") or {}).items():
            headers.extend((k, str(v)) for v in vs)
        headers.extend(("Set-Cookie", c) for c in payload.get("cookies") or [])
        body = payload.get("body") or ""
        out = base64.b64decode(body) if payload.get("isBase64Encoded") else str(body).encode()
        return status, headers, out


class AdminHandler(BaseHTTPRequestHandler):
    """`GET /functions`, `GET /event-sources`; `POST /event-sources/<label>/enable|disable` (as UpdateEventSourceMapping)."""

    protocol_version = "HTTP/1.1"
    emulator: "Emulator"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        emu = self.emulator
        if self.path == "/functions":
            return self._send(200, {f.logical: f.describe() for f in emu.functions.values()})
        if self.path == "/event-sources":
            return self._send(200, emu.describe_sources())
        self._send(404, {"message": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "event-sources" and parts[2] in ("enable", "disable"):
            src = self.emulator.sources.get(parts[1])
            if src is None:
                return self._send(404, {"message": f"no event source {parts[1]}"})
            (src.enabled.set if parts[2] == "enable" else src.enabled.clear)()
            return self._send(200, {"label": parts[1], "enabled": src.enabled.is_set()})
        self._send(404, {"message": "Not Found"})


# --------------------------------------------------------------------------


class Emulator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.region = args.region
        self.stopping = threading.Event()
        self.log_dir = Path(args.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.async_retry_delay_s = args.async_retry_delay
        self.aws = Aws(args.endpoint, args.region)
        template = load_template(Path(args.template))
        merge_globals(template)
        apply_overrides(template, args.set or [])
        self.apis: dict[str, HttpApi] = {}
        self.stack = Stack(template, args.stack_name, args.region, dict(kv(p, "--param") for p in args.param or []), self.aws, self._api_url)
        self.functions: dict[str, Function] = {}
        self.sources: dict[str, Any] = {}
        self.s3_sources: dict[str, S3Source] = {}
        self.admin: ThreadingHTTPServer | None = None

    def _api_url(self, logical: str) -> str:
        api = self.apis.get(logical)
        return api.url if api is not None and api.server is not None else ""

    def describe_sources(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, s in self.sources.items():
            source = getattr(s, "queue_arn", None) or getattr(s, "stream_arn", None)
            out[label] = {"function": s.fn.logical, "source": source, "enabled": s.enabled.is_set(), **s.stats}
        for bucket, s in self.s3_sources.items():
            out[f"s3:{bucket}"] = {"functions": [fn.logical for _, fn, _ in s.routes], **s.stats}
        for logical, api in self.apis.items():
            out[f"api:{logical}"] = {"url": api.url, "routes": [r.key + " -> " + r.fn.logical for r in api.routes], **api.stats}
        return out

    # -- wiring

    def _listen_apis(self) -> None:
        """Opens a port for every HTTP API first, so that references to an API resolve to its local URL."""
        st = self.stack
        ports = dict(kv(p, "--api-port") for p in self.args.api_port or [])
        logicals = [k for k, r in st.resources.items() if r.get("Type") in ("AWS::Serverless::HttpApi", "AWS::ApiGatewayV2::Api")]
        implicit = any(
            ev.get("Type") == "HttpApi" and not (ev.get("Properties") or {}).get("ApiId")
            for r in st.resources.values()
            if r.get("Type") == "AWS::Serverless::Function"
            for ev in ((r.get("Properties") or {}).get("Events") or {}).values()
        )
        if implicit:
            logicals.append("ServerlessHttpApi")
            st.resources["ServerlessHttpApi"] = {"Type": "AWS::Serverless::HttpApi", "Properties": {}}
        for logical in sorted(logicals):
            api = HttpApi(self, logical, "")
            default = ports.get("*", "0") if len(logicals) == 1 else "0"
            api.listen(int(ports.get(logical, default)))
            self.apis[logical] = api
            api.api_id = str(st.attr(logical, "Ref"))

    def _local_urls(self, value: str) -> str:
        """An API's AWS address (https://{id}.execute-api.{region}.amazonaws.com) as its local URL."""
        for api in self.apis.values():
            value = re.sub(
                rf"https://{re.escape(api.api_id)}\.execute-api\.{re.escape(self.region)}\.amazonaws\.com/?",
                api.url + "/",
                value,
            )
        return value

    def build(self) -> None:
        st = self.stack
        self._listen_apis()
        st.create_all()
        resources = st.resources
        extra_env = dict(kv(e, "--env") for e in self.args.env or [])
        concurrency = dict(kv(c, "--concurrency") for c in self.args.concurrency or [])
        # Functions.
        for logical, res in resources.items():
            if res.get("Type") not in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
                continue
            props = res.get("Properties") or {}
            binary_name = ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
            if not binary_name:
                raise SystemExit(f"{logical}: no Metadata.BuildProperties.Binary, so no binary to run")
            binary = (Path(self.args.bin_dir) / binary_name).resolve()
            if not os.access(binary, os.X_OK):
                raise SystemExit(f"{logical}: {binary} is not an executable (build it: cargo build -p {binary_name})")
            name, arn = st.attr(logical, "Ref"), st.attr(logical, "Arn")
            variables = st.resolve((props.get("Environment") or {}).get("Variables") or {})
            memory = int(st.resolve(props.get("MemorySize", 128)))
            timeout = float(st.resolve(props.get("Timeout", 3)))
            env = {k: self._local_urls(str(v).lower() if isinstance(v, bool) else str(v)) for k, v in variables.items()}
            env.update(
                {
                    "AWS_LAMBDA_FUNCTION_NAME": name,
                    "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
                    "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{name}",
                    "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                    "AWS_REGION": self.region,
                    "AWS_DEFAULT_REGION": self.region,
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_ENDPOINT_URL": self.aws.endpoint,
                    "AWS_EXECUTION_ENV": "AWS_Lambda_provided.al2023",
                    "_HANDLER": str(props.get("Handler", "bootstrap")),
                    "LAMBDA_TASK_ROOT": str(binary.parent),
                    "LAMBDA_RUNTIME_DIR": str(binary.parent),
                    "TZ": ":UTC",
                    "LANG": "en_US.UTF-8",
                    "PATH": "/usr/local/bin:/usr/bin:/bin",
                }
            )
            env.update(extra_env)
            fn = Function(self, logical, name, arn, binary, env, timeout, memory, st.resolve(props))
            self.functions[logical] = fn
        by_arn = {f.arn: f for f in self.functions.values()}
        # Event sources declared on SAM functions.
        capacity = {logical: 0 for logical in self.functions}
        for logical, fn in self.functions.items():
            events = (resources[logical].get("Properties") or {}).get("Events") or {}
            for label, ev in events.items():
                kind, props = ev.get("Type"), st.resolve(ev.get("Properties") or {})
                capacity[logical] += self._wire(fn, f"{logical}.{label}", kind, props, concurrency)
        # Raw event source mappings.
        for logical, res in resources.items():
            if res.get("Type") != "AWS::Lambda::EventSourceMapping":
                continue
            props = st.resolve(res.get("Properties") or {})
            fn = self._function_named(props.get("FunctionName"), by_arn)
            source_arn = props.get("EventSourceArn", "")
            kind = "SQS" if ":sqs:" in source_arn else "DynamoDB" if ":dynamodb:" in source_arn else None
            if kind is None:
                log(f"{logical}: event source {source_arn} is not SQS or DynamoDB; not wired")
                continue
            props["Queue" if kind == "SQS" else "Stream"] = source_arn
            capacity[fn.logical] += self._wire(fn, logical, kind, props, concurrency)
        # An HTTP API made by quick create (`Target` on the Api): one route to that function.
        for logical, res in resources.items():
            if res.get("Type") != "AWS::ApiGatewayV2::Api":
                continue
            props = st.resolve(res.get("Properties") or {})
            if props.get("Body") or props.get("BodyS3Location"):
                log(f"{logical}: routes from an OpenAPI body are not emulated")
            if props.get("Target"):
                fn = next((f for arn, f in by_arn.items() if arn in str(props["Target"])), None)
                if fn is None:
                    log(f"{logical}: Target {props['Target']!r} names no function of the template; not wired")
                    continue
                self.apis[logical].routes.append(Route(str(props.get("RouteKey", "$default")), fn, API_INTEGRATION_TIMEOUT_S))
        # Raw HTTP API routes.
        integrations = {k: v for k, v in resources.items() if v.get("Type") == "AWS::ApiGatewayV2::Integration"}
        for logical, res in resources.items():
            if res.get("Type") != "AWS::ApiGatewayV2::Route":
                continue
            props = st.resolve(res.get("Properties") or {})
            target = str(props.get("Target", ""))
            integ_id = target.split("/", 1)[1] if target.startswith("integrations/") else None
            if integ_id not in integrations:
                log(f"{logical}: target {target!r} is not an integration of the template; not wired")
                continue
            integ = st.resolve(integrations[integ_id].get("Properties") or {})
            uri = str(integ.get("IntegrationUri", ""))
            fn = next((f for arn, f in by_arn.items() if arn in uri), None)
            if fn is None:
                log(f"{logical}: integration {integ_id} ({uri}) names no function of the template; not wired")
                continue
            api = self._api_by_id(str(props.get("ApiId")))
            timeout = min(float(integ.get("TimeoutInMillis", API_INTEGRATION_TIMEOUT_S * 1000)) / 1000, API_INTEGRATION_TIMEOUT_S)
            version = str(integ.get("PayloadFormatVersion", "2.0"))
            if version != "2.0":
                log(f"{logical}: payload format {version} is not emulated; 2.0 is sent")
            api.routes.append(Route(str(props["RouteKey"]), fn, timeout, version))
        for logical, fn in self.functions.items():
            http_routes = any(r.fn is fn for api in self.apis.values() for r in api.routes)
            fn.capacity = max(1, capacity[logical] + (int(concurrency.get(logical, self.args.http_concurrency)) if http_routes else 0))

    def _function_named(self, ref: Any, by_arn: dict[str, Function]) -> Function:
        for f in self.functions.values():
            if ref in (f.name, f.arn, f.logical):
                return f
        if ref in by_arn:
            return by_arn[ref]
        raise SystemExit(f"an event source mapping names {ref!r}, not a function of the template")

    def _api_by_id(self, api_id: str) -> HttpApi:
        for api in self.apis.values():
            if api.api_id == api_id:
                return api
        raise SystemExit(f"a route names the API {api_id}, which is not an HTTP API of the template")

    def _wire(self, fn: Function, label: str, kind: str, props: dict[str, Any], concurrency: dict[str, str]) -> int:
        """Connects one event source; returns the instances it needs."""
        if kind == "SQS":
            n = int(concurrency.get(fn.logical, self.args.sqs_concurrency))
            src = SqsSource(self, fn, label, props["Queue"], props, n)
            self.sources[label] = src
            return src.pollers
        if kind == "DynamoDB":
            self.sources[label] = StreamSource(self, fn, label, props["Stream"], props)
            return 1
        if kind == "S3":
            bucket = props["Bucket"]
            src = self.s3_sources.setdefault(bucket, S3Source(self, bucket))
            src.add(fn, label.split(".")[-1], props)
            return 1
        if kind == "HttpApi":
            api = self._api_by_id(str(props["ApiId"])) if props.get("ApiId") else self.apis["ServerlessHttpApi"]
            if props.get("Path") is None and props.get("Method") is None:
                key = "$default"
            else:
                method = str(props.get("Method", "ANY")).upper()
                key = f"{'ANY' if method in ('ANY', 'X-AMAZON-APIGATEWAY-ANY-METHOD') else method} {props.get('Path', '/')}"
            timeout = min(float(props.get("TimeoutInMillis", API_INTEGRATION_TIMEOUT_S * 1000)) / 1000, API_INTEGRATION_TIMEOUT_S)
            api.routes.append(Route(key, fn, timeout, str(props.get("PayloadFormatVersion", "2.0"))))
            return 0
        log(f"{label}: event type {kind} is not emulated; not wired")
        return 0

    # -- running

    def start(self) -> dict[str, Any]:
        admin = self

        class Admin(AdminHandler):
            emulator = admin

        self.admin = ThreadingHTTPServer(("127.0.0.1", self.args.admin_port), Admin)
        self.admin.daemon_threads = True
        threading.Thread(target=self.admin.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        # One cold start of every function, so that a function that cannot
        # start stops the emulator here, with its log, instead of failing
        # its first event.
        failures = []
        threads = []
        for fn in self.functions.values():
            def warm(fn: Function = fn) -> None:
                inst = fn.acquire()
                assert inst is not None
                try:
                    err = inst.wait_ready(INIT_TIMEOUT_S)
                except Exception as e:  # reported below with the others
                    err = repr(e)
                finally:
                    fn.release(inst)
                if err is not None:
                    failures.append(f"{fn.logical}: {err} (log: {self.log_dir / (fn.logical + '.log')})")
            t = threading.Thread(target=warm, daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError("functions failed to start:\n  " + "\n  ".join(failures))
        for src in self.sources.values():
            src.start()
        for s3 in self.s3_sources.values():
            s3.start()
        info = {
            "api": {logical: api.url for logical, api in self.apis.items()},
            "api_url": next(iter(sorted((l, a.url) for l, a in self.apis.items())), (None, None))[1],
            "admin_url": f"http://127.0.0.1:{self.admin.server_address[1]}",
            "endpoint": self.aws.endpoint,
            "region": self.region,
            "log_dir": str(self.log_dir),
            "functions": {f.logical: f.name for f in self.functions.values()},
            "routes": {logical: [r.key + " -> " + r.fn.logical for r in api.routes] for logical, api in self.apis.items()},
            "resources": {k: v for k, v in self.stack.physical.items() if self.stack.resources.get(k, {}).get("Type") in ("AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::S3::Bucket")},
            "pid": os.getpid(),
        }
        return info

    def stop(self) -> None:
        self.stopping.set()
        for api in self.apis.values():
            if api.server is not None:
                api.server.shutdown()
        threads = [threading.Thread(target=fn.stop) for fn in self.functions.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.admin is not None:
            self.admin.shutdown()


def kv(item: str, flag: str) -> tuple[str, str]:
    k, sep, v = item.partition("=")
    if not sep or not k:
        raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE")
    return k, v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--template", default="template.yaml")
    ap.add_argument("--endpoint", help="moto's URL, e.g. http://127.0.0.1:5015 (required to run)")
    ap.add_argument("--bin-dir", help="directory of the function binaries, cargo's target/debug or target/release (required to run)")
    ap.add_argument("--stack-name", default="imgproc")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--param", action="append", metavar="NAME=VALUE", help="a template parameter")
    ap.add_argument("--env", action="append", metavar="NAME=VALUE", help="an environment variable for every function")
    ap.add_argument("--set", action="append", metavar="LOGICAL.PROP=VALUE", help="override a resource property (value: JSON or text)")
    ap.add_argument("--concurrency", action="append", metavar="LOGICAL=N", help="pollers per SQS source / instances for HTTP of one function")
    ap.add_argument("--sqs-concurrency", type=int, default=2, help="pollers (and instances) per SQS event source (default 2)")
    ap.add_argument("--http-concurrency", type=int, default=6, help="instances per HTTP function (default 6)")
    ap.add_argument("--api-port", action="append", metavar="LOGICAL=PORT", help="port of an HTTP API (`*=PORT` when there is one); default: any free port")
    ap.add_argument("--admin-port", type=int, default=0)
    ap.add_argument("--async-retry-delay", type=float, default=1.0, help="seconds before the first retry of an asynchronous invocation (Lambda: 60)")
    ap.add_argument("--log-dir", default="lambda-logs")
    ap.add_argument("--ready-file")
    ap.add_argument("--list-binaries", action="store_true", help="print the template's function binaries, one a line, and exit")
    args = ap.parse_args()

    if args.list_binaries:
        template = load_template(Path(args.template))
        for res in (template.get("Resources") or {}).values():
            if res.get("Type") in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
                binary = ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
                if binary:
                    print(binary)
        return

    if not args.endpoint or not args.bin_dir:
        ap.error("--endpoint and --bin-dir are required")
    emu = Emulator(args)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        emu.build()
        info = emu.start()
    except (RuntimeError, SystemExit, Exception) as e:  # a clear reason, then stop what was started
        log(f"cannot start: {e}")
        emu.stop()
        raise SystemExit(1) from None
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(args.ready_file)
    log(f"ready: API {info['api_url']}, admin {info['admin_url']}, logs in {info['log_dir']}")
    while not done.wait(0.5):
        pass
    log("stopping")
    emu.stop()
    if args.ready_file:
        Path(args.ready_file).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
