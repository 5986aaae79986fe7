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
back to moto's own code whenever the index does not hold the handle. What
each call returns, raises and changes is unchanged (infra/tests/ compares
both versions call by call). The copies are of moto 5.2.1 exactly: the
patch checks the source of the functions it replaces and leaves moto as it
is, with a warning, if it differs. `MOTO_SQS_PATCH=0` runs moto unchanged
(to measure the difference).

    python3 infra/moto_serial_server.py HOST PORT
"""

from __future__ import annotations

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


def _source_digest(fn: Any) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()


def patch_moto_sqs() -> bool:
    """Makes SQS's per-message work independent of the queue's depth.

    Returns False (and changes nothing) when moto is not the version the
    replacements were copied from.
    """
    from moto.sqs import models

    owners = {"SQSBackend": models.SQSBackend, "Queue": models.Queue}
    for qualified, digest in _REPLACED.items():
        owner, name = qualified.split(".")
        fn = getattr(owners[owner], name)
        if getattr(fn, "_imgproc_patched", False):
            return True
        if _source_digest(fn) != digest:
            print(
                f"moto_serial_server: moto's {qualified} is not the one this patch was written for "
                "(moto 5.2.1); SQS stays quadratic in queue depth",
                file=sys.stderr,
            )
            return False

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


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    # moto builds queue URLs and the like from this.
    os.environ.setdefault("MOTO_PORT", str(port))
    if os.environ.get("MOTO_SQS_PATCH", "1") != "0":
        patch_moto_sqs()
    from werkzeug.serving import run_simple
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False)


if __name__ == "__main__":
    main()
