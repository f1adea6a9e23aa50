#!/usr/bin/env python3
"""Reads N dualbus envelopes from one Redis stream through a consumer group.

    python3 examples/python/consumer.py --url redis://127.0.0.1:6381 \
        --stream dualbus:logic:demo_event --group pyml --consumer pyml-1 --count 10

Creates the group (MKSTREAM; at the newest entry, or the oldest with --from-start), reads with
XREADGROUP BLOCK, decodes each entry's payload with the entry's own `enc`, acknowledges it and
prints it as one JSON object per line: every wire field as a string, except `seq` and `ts`
(integers) and `payload` (the decoded value); `corr` and `reply` only when present.

Entries that are not valid envelopes are reported on stderr and acknowledged, but not counted.
With --schemas DIR (docs/schemas), each payload is also checked against the JSON Schema of its
kind (generated from the Rust types; needs the `jsonschema` package): a payload that does not
follow it is printed and counted like the others, reported on stderr with the reason, and the
exit status is 3. Kinds without a schema (custom kinds) are not checked.
Exits 0 after N messages; exits 1 if --timeout seconds pass first (saying how many arrived),
2 on bad arguments or a Redis error, 3 when a payload broke its schema.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dualbus_wire as wire  # noqa: E402


def _json_default(o):
    # MessagePack may carry binary values, which JSON has no type for.
    if isinstance(o, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(o)).decode("ascii")}
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def to_line(msg: dict) -> str:
    out = {}
    for name in wire.FIELDS:
        value = msg.get(name)
        if name in ("corr", "reply") and value is None:
            continue
        out[name] = value
    return json.dumps(out, default=_json_default, ensure_ascii=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Consume dualbus envelopes from a Redis stream.")
    ap.add_argument("--url", required=True, help="Redis URL, e.g. redis://127.0.0.1:6381")
    ap.add_argument("--stream", required=True, help="stream key")
    ap.add_argument("--group", required=True, help="consumer group (the engine's name)")
    ap.add_argument("--consumer", required=True, help="consumer name (the instance id)")
    ap.add_argument("--count", required=True, type=int, help="messages to receive, then exit 0")
    ap.add_argument("--from-start", action="store_true",
                    help="create the group at the oldest entry (id 0) instead of the newest ($)")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for all messages (default 10)")
    ap.add_argument("--max-payload", type=int, default=wire.DEFAULT_MAX_PAYLOAD,
                    help="largest accepted payload in bytes (default 1 MiB)")
    ap.add_argument("--schemas", metavar="DIR",
                    help="check each payload against its schema in DIR (docs/schemas)")
    args = ap.parse_args(argv)
    if args.count < 0:
        ap.error("--count must be >= 0")
    schemas = None
    if args.schemas:
        try:
            import jsonschema  # noqa: F401
        except ImportError:
            ap.error("--schemas needs the jsonschema package (pip install jsonschema)")
        try:
            schemas = wire.load_schemas(args.schemas)
        except (OSError, ValueError) as e:
            ap.error(f"--schemas {args.schemas}: {e}")
    broken = 0

    import redis

    deadline = time.monotonic() + args.timeout
    received = 0
    try:
        r = redis.Redis.from_url(args.url)
        try:
            r.xgroup_create(args.stream, args.group, id="0" if args.from_start else "$",
                            mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        # First this consumer's own pending entries (delivered before, never acknowledged),
        # then new ones.
        cursor = "0"
        while received < args.count:
            if cursor == ">":
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    break
                block = left_ms
            else:
                block = None
            reply = r.xreadgroup(args.group, args.consumer, {args.stream: cursor},
                                 count=min(args.count - received, 1000), block=block)
            entries = reply[0][1] if reply else []
            if cursor != ">" and not entries:
                cursor = ">"
                continue
            for entry_id, fields in entries:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                if cursor != ">":
                    cursor = eid  # page through the pending history
                try:
                    if not fields:
                        raise wire.WireError("payload", "entry was trimmed from the stream")
                    msg = wire.parse_fields(fields, max_payload=args.max_payload)
                except wire.WireError as e:
                    print(f"consumer: skipping entry {eid} of {args.stream}: {e}",
                          file=sys.stderr, flush=True)
                    r.xack(args.stream, args.group, entry_id)
                    continue
                if schemas is not None:
                    problem = wire.schema_problem(msg["payload"], msg["kind"], msg["topic"],
                                                  schemas)
                    if problem is not None:
                        broken += 1
                        print(f"consumer: entry {eid} ({msg['id']}) breaks its schema: {problem}",
                              file=sys.stderr, flush=True)
                print(to_line(msg), flush=True)
                r.xack(args.stream, args.group, entry_id)
                received += 1
    except redis.RedisError as e:
        print(f"consumer: redis error on {args.url} stream {args.stream}: {e} "
              f"({received} of {args.count} messages received)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"consumer: interrupted, {received} of {args.count} messages received",
              file=sys.stderr)
        return 130

    if received < args.count:
        print(f"consumer: timeout after {args.timeout:g}s: {received} of {args.count} "
              f"messages received on {args.stream}", file=sys.stderr)
        return 1
    if broken:
        print(f"consumer: {broken} of {received} payloads broke their schema", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
