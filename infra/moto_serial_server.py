"""moto's server, handling one request at a time, with SQS made linear.

`moto_server` serves requests on parallel threads, and moto's DynamoDB and
SQS backends do not lock: two concurrent conditional writes can both pass
their condition, and two concurrent `ADD`s can lose one. DynamoDB itself
applies each item write atomically, so the conformance suite's "exactly
once under concurrent duplicates" checks would test moto's races, not our
code. Serving requests one by one gives the atomicity DynamoDB promises
while the clients still send them concurrently. A consequence: a long poll
(`WaitTimeSeconds` > 0) on an empty queue holds the only thread, so clients
of this server poll SQS with `WaitTimeSeconds=0` and wait on their side.

moto 5.2.1's SQS costs time in proportion to the queue's depth on every
message, which makes a deep queue quadratic:
- `SendMessage` (and each entry of `SendMessageBatch`, which calls it) reads
  `queue.attributes` for one flag; that property counts the visible, delayed
  and in-flight messages by walking the whole queue three times.
- `ReceiveMessage` builds the list of every visible message before taking
  ten, and checks each message taken against the retention period through
  `get_queue_attributes`, which computes `queue.attributes` three times.
- `DeleteMessage` and `ChangeMessageVisibility` walk the queue comparing the
  receipt handle with every message's list of past handles, and
  `DeleteMessage` rebuilds the list.
`patch_moto_sqs` replaces those five functions with copies that read the
flag and the retention period directly, stop walking once the batch is
full, and find a message by its receipt handle through an index, falling
back to moto's own code whenever the index does not hold the handle.

moto 5.2.1's DynamoDB `TransactWriteItems` deep-copies every table it
touches (all items and the whole stream history), once per action, before
it starts, to roll back on failure: each transaction costs time in
proportion to the table. `patch_moto_dynamodb` keeps copies of only the
items the transaction names (and the length of each table's stream), and
a rollback restores those items and drops the stream records written since.
One difference: moto's rollback swaps in the copied table, which leaves
every open shard iterator reading the discarded table's stream (new records
never reach it); with the patch the table object stays, so they keep
working, as DynamoDB's do.

moto 5.2.1 turns every DynamoDB and DynamoDB Streams answer into JSON
through its generic, model-driven serializer, which looks up six kinds of
alias for each of the ten members of every attribute value: a Query page of
500 items, or a page of stream records, costs seconds of the one thread.
`patch_moto_serializer` writes an attribute value that is already in the
wire form (a dict of the members S, N, BOOL, NULL, M, L...) directly, in the
same member order; sets, binaries, and anything else take moto's path.

What each call returns, raises and changes is otherwise unchanged
(infra/tests/ compares both versions call by call). The copies are of moto
5.2.1 exactly: the patch checks the source of the functions it replaces and
leaves moto as it is, with a warning, if it differs. `MOTO_PATCH=0` runs
moto unchanged (to measure the difference).

    python3 infra/moto_serial_server.py HOST PORT
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
import string
import sys
import weakref
from copy import deepcopy
from typing import Any

# moto's own source of each function replaced below, by SHA-256.
_REPLACED = {
    "SQSBackend.send_message": "bf161af09a9e6b860e3dd5d8f58ccc802623caa86883fab9b2ffb333f8f70330",
    "SQSBackend.receive_message": "065f3e5e7d2144089ce3b5d16d9306243ccd2f3ee11b44beb851292fadb7652f",
    "SQSBackend.is_message_valid_based_on_retention_period": "cca23b94a5f3af9d9c5af1c09ee5e615017bdf6bd032301cb321c06c7e595d4b",
    "SQSBackend.change_message_visibility": "f0e9df5f66627114c9249020675ff5accee62a9cab5e797442538c13ac593b99",
    "Queue.delete_message": "fa6fd5b9bd2cafb4aaacd79da7fc656e513e1513197c2939ff002f9ebfd4be46",
}
_REPLACED_DYNAMODB = {
    "DynamoDBBackend.transact_write_items": "81db2cb7d94e39c90b3a2077e1f4bb41a449c558ef9b1b1e2910fdaa39978ad4",
}


def _source_digest(fn: Any) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()


def _unchanged(owners: dict[str, Any], replaced: dict[str, str], what: str) -> bool | None:
    """True when moto's functions are the ones the copies were made from; None when already patched."""
    for qualified, digest in replaced.items():
        owner, name = qualified.split(".")
        fn = getattr(owners[owner], name)
        if getattr(fn, "_imgproc_patched", False):
            return None
        if _source_digest(fn) != digest:
            print(
                f"moto_serial_server: moto's {qualified} is not the one this patch was written for "
                f"(moto 5.2.1); {what}",
                file=sys.stderr,
            )
            return False
    return True


def patch_moto_sqs() -> bool:
    """Makes SQS's per-message work independent of the queue's depth.

    Returns False (and changes nothing) when moto is not the version the
    replacements were copied from.
    """
    from moto.sqs import models

    owners = {"SQSBackend": models.SQSBackend, "Queue": models.Queue}
    state = _unchanged(owners, _REPLACED, "SQS stays quadratic in queue depth")
    if state is not True:
        return state is None

    from moto.core.utils import unix_time, unix_time_millis
    from moto.moto_api._internal import mock_random as random
    from moto.sqs.exceptions import InvalidParameterValue
    from moto.sqs.models import MAXIMUM_MESSAGE_DELAY, Message, _filter_message_attributes

    original_delete = models.Queue.delete_message
    original_change_visibility = models.SQSBackend.change_message_visibility

    # Receipt handle -> message, per queue, for the handles this server gave
    # out. A message leaves its queue's index when it is deleted; one that
    # left the queue another way (the dead-letter queue, a purge) is found in
    # the index but not in the queue, and moto's own code then decides.
    handles: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

    def index_of(queue: Any) -> dict[str, Any]:
        found = handles.get(queue)
        if found is None:
            found = handles[queue] = {}
        return found

    def message_with_handle(queue: Any, receipt_handle: Any) -> tuple[Any, int]:
        """The message holding this handle and its position in the queue, or (None, -1)."""
        message = index_of(queue).get(receipt_handle)
        if message is None:
            return None, -1
        try:
            # A scan by identity in C (messages define no equality), unlike
            # moto's scan through every message's past handles.
            return message, queue._messages.index(message)
        except ValueError:
            return None, -1

    def content_based_deduplication(queue: Any) -> bool:
        # `queue.attributes` lists ContentBasedDeduplication for FIFO queues
        # only, as "true"/"false" from this boolean.
        return bool(queue.fifo_queue) and queue.content_based_deduplication is True

    def send_message(
        self: Any,
        queue_name: str,
        message_body: str,
        message_attributes: dict[str, Any] | None = None,
        delay_seconds: int | None = None,
        deduplication_id: str | None = None,
        group_id: str | None = None,
        system_attributes: dict[str, Any] | None = None,
        validate_group_id: bool = True,
    ) -> Any:
        queue = self.get_queue(queue_name)

        self._validate_message(
            queue,
            message_body=message_body,
            delay_seconds=int(delay_seconds or 0),
            deduplication_id=deduplication_id,
            group_id=group_id,
            validate_group_id=validate_group_id,
        )

        if delay_seconds is not None:
            delay_seconds = int(delay_seconds)
        else:
            delay_seconds = queue.delay_seconds

        message_id = str(random.uuid4())
        message = Message(message_id, message_body, system_attributes)

        if content_based_deduplication(queue):
            sha256 = hashlib.sha256()
            sha256.update(message_body.encode("utf-8"))
            message.deduplication_id = sha256.hexdigest()

        if deduplication_id is not None:
            message.deduplication_id = deduplication_id
            message.sequence_number = "".join(random.choice(string.digits) for _ in range(20))

        if group_id is not None:
            message.group_id = group_id

        if message_attributes:
            message.message_attributes = message_attributes

        if delay_seconds > MAXIMUM_MESSAGE_DELAY:
            msg = (
                f"Value {delay_seconds} for parameter DelaySeconds is invalid. "
                "Reason: DelaySeconds must be >= 0 and <= 900."
            )
            raise InvalidParameterValue(msg)

        message.mark_sent(delay_seconds=delay_seconds)

        queue.add_message(message)

        return message

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        # get_queue_attributes(["MessageRetentionPeriod"]) returns this integer.
        retention_period = self.get_queue(queue_name).message_retention_period
        retain_until = retention_period + message.sent_timestamp / 1000
        if retain_until <= unix_time():
            return False
        return True

    def receive_message(
        self: Any,
        queue_name: str,
        count: int,
        wait_seconds_timeout: int,
        visibility_timeout: int,
        message_attribute_names: list[str] | None = None,
    ) -> list[Any]:
        if message_attribute_names is None:
            message_attribute_names = []
        queue = self.get_queue(queue_name)
        index = index_of(queue)
        result: list[Any] = []
        previous_result_count = len(result)

        polling_end = unix_time() + wait_seconds_timeout
        currently_pending_groups = deepcopy(queue.pending_message_groups)

        while True:
            if result or (wait_seconds_timeout and unix_time() > polling_end):
                break

            messages_to_dlq: list[Any] = []

            # moto lists every visible message first (`queue.messages`); the
            # same messages, in the same order, taken one at a time. Nothing
            # in the loop adds to or removes from `queue._messages`.
            for message in (m for m in queue._messages if m.visible and not m.delayed):
                if not message.visible:
                    continue

                if message in queue.pending_messages:
                    queue.pending_messages.remove(message)
                    currently_pending_groups = deepcopy(queue.pending_message_groups)

                if message.group_id and queue.fifo_queue:
                    if message.group_id in currently_pending_groups:
                        continue

                if (
                    queue.dead_letter_queue is not None
                    and queue.redrive_policy
                    and message.approximate_receive_count >= queue.redrive_policy["maxReceiveCount"]
                ):
                    messages_to_dlq.append(message)
                    continue

                queue.pending_messages.add(message)
                message.mark_received(visibility_timeout=visibility_timeout)
                index[message.receipt_handle] = message
                message_copy = deepcopy(message)
                _filter_message_attributes(message_copy, message_attribute_names)
                if not self.is_message_valid_based_on_retention_period(queue_name, message):
                    break
                result.append(message_copy)
                if len(result) >= count:
                    break

            for message in messages_to_dlq:
                queue._messages.remove(message)
                queue.dead_letter_queue.add_message(message)

            if previous_result_count == len(result):
                if wait_seconds_timeout == 0:
                    break

                queue.wait_for_messages(1)
                continue

            previous_result_count = len(result)

        return result

    def delete_message(self: Any, receipt_handle: str) -> None:
        if receipt_handle in self.deleted_messages:
            return
        message, position = message_with_handle(self, receipt_handle)
        if message is None:
            return original_delete(self, receipt_handle)
        # Receipt handles are unique, so this is the one message moto's scan
        # would find. moto rebuilds the list; removing in place is the same to
        # every reader, as no request runs while another iterates the list.
        self.pending_messages.discard(message)
        self.deleted_messages.update(message.all_receipt_handles)
        del self._messages[position]
        index = index_of(self)
        for handle in message.all_receipt_handles:
            index.pop(handle, None)

    def change_message_visibility(self: Any, queue_name: str, receipt_handle: str, visibility_timeout: int) -> None:
        queue = self.get_queue(queue_name)
        message, _ = message_with_handle(queue, receipt_handle)
        if message is None:
            return original_change_visibility(self, queue_name, receipt_handle, visibility_timeout)
        visibility_timeout_msec = int(visibility_timeout) * 1000
        given_visibility_timeout = unix_time_millis() + visibility_timeout_msec
        if given_visibility_timeout - message.sent_timestamp > 43200 * 1000:
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason: Total "
                "VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )

        message.change_visibility(visibility_timeout)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)

    for fn in (
        send_message,
        receive_message,
        is_message_valid_based_on_retention_period,
        change_message_visibility,
        delete_message,
    ):
        fn._imgproc_patched = True  # type: ignore[attr-defined]
    models.SQSBackend.send_message = send_message
    models.SQSBackend.receive_message = receive_message
    models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period
    models.SQSBackend.change_message_visibility = change_message_visibility
    models.Queue.delete_message = delete_message
    return True


def patch_moto_dynamodb() -> bool:
    """Makes a transaction's rollback copy what it writes, not whole tables.

    Returns False (and changes nothing) when moto is not the version the
    replacement was copied from.
    """
    from moto.dynamodb import models

    state = _unchanged({"DynamoDBBackend": models.DynamoDBBackend}, _REPLACED_DYNAMODB, "transactions copy whole tables")
    if state is not True:
        return state is None

    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models.dynamo_type import DynamoType

    class Snapshot:
        """What a transaction may change in one table: the items it names, and the stream's length."""

        def __init__(self, table: Any) -> None:
            self.table = table
            self.whole: Any = None  # moto's own deep copy, when an action's key cannot be read
            self.items: dict[tuple[Any, Any], tuple[bool, Any]] = {}
            shard = table.stream_shard
            self.stream_length = len(shard.items) if shard is not None else None

        def keep(self, op_type: str, op: dict[str, Any]) -> None:
            if self.whole is not None:
                return
            t = self.table
            try:
                source = op["Item"] if op_type == "Put" else op["Key"]
                hash_value = DynamoType(source[t.hash_key_attr])
                range_value = DynamoType(source[t.range_key_attr]) if t.range_key_attr is not None else None
                key = (hash_value, range_value)
                if key in self.items:
                    return
                if range_value is not None:
                    bucket = t.items.get(hash_value)
                    had_bucket = bucket is not None
                    current = bucket.get(range_value) if bucket is not None else None
                else:
                    had_bucket = hash_value in t.items
                    current = t.items.get(hash_value)
                self.items[key] = (had_bucket, copy.deepcopy(current))
            except Exception:  # a malformed action: moto's way, which the action will fail in
                self.whole = copy.deepcopy(t)

        def restore(self, backend: Any, table_name: str) -> None:
            if self.whole is not None:
                backend.tables[table_name] = self.whole
                return
            t = self.table
            for (hash_value, range_value), (had_bucket, item) in self.items.items():
                if range_value is not None:
                    bucket = t.items.get(hash_value)
                    if item is None:
                        if bucket is not None:
                            bucket.pop(range_value, None)
                            if not bucket and not had_bucket:
                                del t.items[hash_value]
                    else:
                        t.items[hash_value][range_value] = item
                elif item is None:
                    t.items.pop(hash_value, None)
                else:
                    t.items[hash_value] = item
            shard = t.stream_shard
            if shard is not None and self.stream_length is not None and len(shard.items) >= self.stream_length:
                del shard.items[self.stream_length :]

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        # What a rollback needs (moto: a deep copy of each table named).
        original_table_state: dict[str, Snapshot] = {}
        for item in transact_items:
            op_type, op = next(iter(item.items()))
            table_name = op.get("TableName")
            if table_name and table_name in self.tables:
                snapshot = original_table_state.get(table_name)
                if snapshot is None:
                    snapshot = original_table_state[table_name] = Snapshot(self.tables[table_name])
                snapshot.keep(op_type, op)

        def rollback() -> None:
            for table_name, snapshot in original_table_state.items():
                snapshot.restore(self, table_name)

        target_items: set[tuple[str, str]] = set()

        def check_unicity(table_name: str, key: dict[str, Any]) -> None:
            item = (str(table_name), str(dict(sorted(key.items()))))
            if item in target_items:
                raise MultipleTransactionsException()
            target_items.add(item)

        errors: list[tuple[str, str, dict[str, Any]] | tuple[None, None, None]] = []
        for item in transact_items:
            original_item: dict[str, Any] | None = None
            if len(list(item.keys())) > 1:
                raise TransactWriteSingleOpException

            try:
                op_type, op = next(iter(item.items()))
                if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                    raise ValueError("Unsupported transaction operation")

                table_name = op["TableName"]
                condition_expression = op.get("ConditionExpression")
                expression_attribute_names = op.get("ExpressionAttributeNames")
                expression_attribute_values = op.get("ExpressionAttributeValues")
                return_values_on_condition_check_failure = op.get("ReturnValuesOnConditionCheckFailure")

                if op_type == "Put":
                    attrs = op["Item"]
                    table = self.get_table(table_name)
                    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    key = op["Key"]

                check_unicity(table_name, key)

                current = self.get_item(table_name, key)
                if condition_expression is not None:
                    condition_op = get_filter_expression(
                        condition_expression,
                        expression_attribute_names,
                        expression_attribute_values,
                    )
                    if not condition_op.expr(current):
                        if return_values_on_condition_check_failure == "ALL_OLD" and current:
                            original_item = current.to_json()["Attributes"]
                        raise ConditionalCheckFailed(item=original_item)

                if op_type == "Put":
                    attrs = op["Item"]
                    self.put_item(
                        table_name,
                        attrs,
                        condition_expression=condition_expression,
                        expression_attribute_names=expression_attribute_names,
                        expression_attribute_values=expression_attribute_values,
                    )
                elif op_type == "Delete":
                    self.delete_item(
                        table_name,
                        key,
                        condition_expression=condition_expression,
                        expression_attribute_names=expression_attribute_names,
                        expression_attribute_values=expression_attribute_values,
                    )
                elif op_type == "Update":
                    update_expression = op["UpdateExpression"]
                    self.update_item(
                        table_name,
                        key,
                        update_expression=update_expression,
                        condition_expression=condition_expression,
                        expression_attribute_names=expression_attribute_names,
                        expression_attribute_values=expression_attribute_values,
                    )
                errors.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                rollback()
                raise
            except ConditionalCheckFailed as e:
                errors.append(("ConditionalCheckFailed", str(e.message), original_item))  # type: ignore
            except Exception as e:  # noqa: BLE001 - moto reports every other error this way
                errors.append((type(e).__name__, str(e), original_item))  # type: ignore

        if any(code is not None for code, _, _ in errors):
            rollback()
            raise TransactionCanceledException(errors)

    transact_write_items._imgproc_patched = True  # type: ignore[attr-defined]
    models.DynamoDBBackend.transact_write_items = transact_write_items
    return True


def patch_moto_serializer() -> bool:
    """Serializes DynamoDB attribute values without the per-member alias search."""
    from moto.core import serialize

    cls = serialize.JSONSerializer
    if getattr(cls._serialize_type_structure, "_imgproc_patched", False):
        return True
    original = cls._serialize_type_structure
    services = {"dynamodb", "dynamodbstreams"}
    # Members whose value the generic path copies as it is (strings, booleans).
    plain = {"S", "N", "NULL", "BOOL"}

    def attribute_value(self: Any, value: dict[str, Any], shape: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for member_key, member_shape in shape.members.items():
            member = value.get(member_key)
            if member is None:
                continue
            if member_key in plain:
                out[member_key] = member
            elif member_key == "M" and type(member) is dict:
                av = member_shape.value
                entries: dict[str, Any] = {}
                for k, v in member.items():
                    if k and type(v) is dict and v.keys() <= av.members.keys():
                        entries[k] = attribute_value(self, v, av)
                    else:
                        self._serialize(entries, v, av, k)
                out["M"] = entries
            elif member_key == "L" and type(member) is list:
                av = member_shape.member
                out["L"] = [self._imgproc_av(v, av) for v in member]
            else:
                member_shape.parent = shape
                self._serialize(out, member, member_shape, member_key)
        return out

    def serialize_av(self: Any, value: Any, shape: Any) -> Any:
        """One attribute value as the generic path would write it (a list item or a map value)."""
        if type(value) is dict and value.keys() <= shape.members.keys():
            return attribute_value(self, value, shape)
        wrapper: dict[str, Any] = {}
        self._serialize(wrapper, value, shape, shape.name)
        return wrapper.get(shape.name, value)

    def _serialize_type_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if (
            shape.name == "AttributeValue"
            and type(value) is dict
            and value.keys() <= shape.members.keys()
            and self.operation_model.service_model.service_name in services
            and not getattr(self._value_picker, "response_transformers", None)
        ):
            out = attribute_value(self, value, shape)
            if key:
                self._default_serialize(serialized, out, shape, key)
            else:
                serialized.update(out)
            return
        original(self, serialized, value, shape, key)

    _serialize_type_structure._imgproc_patched = True  # type: ignore[attr-defined]
    cls._imgproc_av = serialize_av  # type: ignore[attr-defined]
    cls._serialize_type_structure = _serialize_type_structure  # type: ignore[method-assign]
    return True


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    # moto builds queue URLs and the like from this.
    os.environ.setdefault("MOTO_PORT", str(port))
    if os.environ.get("MOTO_PATCH", "1") != "0":
        patch_moto_sqs()
        patch_moto_dynamodb()
        patch_moto_serializer()
    from werkzeug.serving import run_simple
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False)


if __name__ == "__main__":
    main()
