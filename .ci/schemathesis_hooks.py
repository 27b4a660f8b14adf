"""How the API fuzzer sends what it cannot serialize by itself: a catalog feed is NDJSON, one
JSON value per line (a generated array is sent as its items, anything else as one line)."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()
