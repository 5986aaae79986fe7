"""Schemathesis hooks for scripts/api-conformance.sh: CSV bodies are sent as
their UTF-8 text, under both media types the API accepts."""

import schemathesis


@schemathesis.serializer("text/csv", "application/csv")
def csv_body(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
