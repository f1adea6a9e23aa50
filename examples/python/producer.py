#!/usr/bin/env python3
"""Publishes N dualbus envelopes to one Redis stream.

    python3 examples/python/producer.py --url redis://127.0.0.1:6381 \
        --stream dualbus:logic:demo_event --kind demo_event \
        --topic demo_event.BTCUSDT --count 10 --enc msgpack

Entry i (0-based) has payload {"n": i, "from": "python"}, seq = start-seq + i and ts = now in
Unix nanoseconds. Prints `published N` and exits 0; exits 2 on bad arguments or a Redis error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dualbus_wire as wire  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Publish dualbus envelopes to a Redis stream.")
    ap.add_argument("--url", required=True, help="Redis URL, e.g. redis://127.0.0.1:6381")
    ap.add_argument("--stream", required=True, help="stream key, e.g. dualbus:logic:demo_event")
    ap.add_argument("--kind", required=True, help="event kind, e.g. demo_event (a kind no engine consumes)")
    ap.add_argument("--topic", required=True, help="topic starting with the kind")
    ap.add_argument("--count", required=True, type=int, help="number of messages")
    ap.add_argument("--enc", choices=wire.ENCODINGS, default="json", help="payload encoding")
    ap.add_argument("--src", default="py", help="publishing engine name (default py)")
    ap.add_argument("--inst", default="py-1", help="publishing instance id (default py-1)")
    ap.add_argument("--start-seq", type=int, default=1, help="seq of the first message")
    ap.add_argument("--prio", choices=wire.PRIORITIES, default="normal", help="priority")
    ap.add_argument("--maxlen", type=int, default=1_000_000,
                    help="trim the stream to about this many entries (0: no trimming)")
    args = ap.parse_args(argv)
    if args.count < 0:
        ap.error("--count must be >= 0")

    try:
        entries = [
            wire.build_fields(args.kind, args.topic, args.src, args.inst, args.start_seq + i,
                              {"n": i, "from": "python"}, enc=args.enc, prio=args.prio,
                              ts=time.time_ns())
            for i in range(args.count)
        ]
    except wire.WireError as e:
        print(f"producer: {e}", file=sys.stderr)
        return 2

    import redis

    try:
        r = redis.Redis.from_url(args.url)
        maxlen = args.maxlen if args.maxlen > 0 else None
        # One pipeline per 1000 entries: one round trip each, in order.
        for start in range(0, len(entries), 1000):
            pipe = r.pipeline(transaction=False)
            for fields in entries[start:start + 1000]:
                pipe.xadd(args.stream, fields, maxlen=maxlen, approximate=True)
            pipe.execute()
    except redis.RedisError as e:
        print(f"producer: redis error on {args.url} stream {args.stream}: {e}", file=sys.stderr)
        return 2
    print(f"published {args.count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
