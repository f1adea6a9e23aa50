"""The dualbus wire format (version 1) for Python clients.

A message is one Redis Stream entry with the fields of docs/wire-format.md. This module builds
those fields, parses them back (with the same rules as the Rust reader,
``dualbus_core::Envelope::from_wire_fields``) and names the stream keys.

    >>> fields = build_fields("risk_alert", "risk_alert.BTCUSDT", "py", "py-1", 1,
    ...                       {"rule": "max_position"}, prio="critical")
    >>> parse_fields(fields)["payload"]
    {'rule': 'max_position'}
    >>> stream_for("risk_alert", "critical")
    'dualbus:logic:priority'

Dependencies: ``msgpack`` (only for ``enc="msgpack"``).
"""

from __future__ import annotations

import binascii
import json
import os
import re
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

WIRE_VERSION = "1"
DEFAULT_PREFIX = "dualbus"
DEFAULT_MAX_PAYLOAD = 1 << 20
U64_MAX = (1 << 64) - 1
MAX_TOPIC_LEN = 256
MAX_KIND_LEN = 64
MAX_NAME_LEN = 128

#: The wire fields, in the order the Rust publisher writes them.
FIELDS = ("v", "id", "kind", "topic", "src", "inst", "seq", "ts", "prio", "enc", "corr",
          "reply", "payload")
REQUIRED = ("v", "id", "kind", "topic", "src", "inst", "seq", "ts", "prio", "enc", "payload")
PRIORITIES = ("low", "normal", "high", "critical")
ENCODINGS = ("json", "msgpack")

BUS_MD = "md"
BUS_LOGIC = "logic"
BUSES = (BUS_MD, BUS_LOGIC)
DEFAULT_URLS = {BUS_MD: "redis://127.0.0.1:6380", BUS_LOGIC: "redis://127.0.0.1:6381"}

#: The 18 known kinds, in the order of `EventKind::KNOWN` (docs/architecture.md, "Buses and routing by kind").
KNOWN_KINDS = (
    "market_data", "price_update", "trade_execution", "risk_alert", "ml_prediction",
    "strategy_signal", "portfolio_update", "vpin_calculation", "factor_calculation",
    "feature_vector", "analytics_result", "order_request", "position_change", "margin_call",
    "toxicity_alert", "flash_crash_alert", "engine_health", "system_alert",
)
#: Kinds routed to the MarketData bus by default; every other kind goes to the logic bus.
MD_KINDS = frozenset({"market_data", "price_update", "trade_execution"})
#: Kinds that always travel on the priority lane.
CRITICAL_KINDS = frozenset({"risk_alert", "flash_crash_alert", "margin_call", "system_alert"})

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_KIND_RE = re.compile(r"[a-z0-9_]{1,64}")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]+")
# What Rust's `str::parse::<u64>` accepts: an optional '+', then ASCII digits.
_U64_RE = re.compile(r"\+?[0-9]+")


class WireError(ValueError):
    """An entry (or the arguments of one) that is not a valid envelope; names the field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"field `{field}`: {reason}")
        self.field = field
        self.reason = reason


# --- validation, as the Rust reader does it ---------------------------------------------------

def valid_name(s: str) -> bool:
    """`src`/`inst`: 1-128 characters of [A-Za-z0-9_-]."""
    return _NAME_RE.fullmatch(s) is not None


def valid_kind(s: str) -> bool:
    """`kind`: snake_case, 1-64 characters of [a-z0-9_]."""
    return _KIND_RE.fullmatch(s) is not None


def topic_error(s: str) -> Optional[str]:
    """Why `s` is not a valid topic, or None when it is."""
    if not s:
        return "empty topic"
    if len(s.encode("utf-8")) > MAX_TOPIC_LEN:
        return f"topic is {len(s.encode('utf-8'))} bytes long, the limit is {MAX_TOPIC_LEN}"
    for i, seg in enumerate(s.split(".")):
        if _SEGMENT_RE.fullmatch(seg) is None:
            what = "is empty" if not seg else "may only contain A-Z, a-z, 0-9, '_' and '-'"
            return f"segment {i} ({seg!r}) {what}"
    return None


# --- payloads ---------------------------------------------------------------------------------

def encode_payload(obj: Any, enc: str = "json") -> bytes:
    """Encodes a payload: compact UTF-8 JSON, or MessagePack maps with named fields."""
    if enc == "json":
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    if enc == "msgpack":
        import msgpack
        return msgpack.packb(obj, use_bin_type=True)
    raise WireError("enc", f"unknown encoding {enc!r}: expected json or msgpack")


def decode_payload(data: bytes, enc: str) -> Any:
    """Decodes a payload with the encoding named by the entry itself."""
    try:
        if enc == "json":
            return json.loads(data.decode("utf-8"))
        if enc == "msgpack":
            import msgpack
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad payload
        raise WireError("payload", f"cannot decode {enc} payload: {e}") from e
    raise WireError("enc", f"unknown encoding {enc!r}: expected json or msgpack")


# --- building and parsing entries -------------------------------------------------------------

def message_id(src: str, inst: str, seq: int) -> str:
    """The message id, `{src}:{inst}:{seq}`."""
    return f"{src}:{inst}:{seq}"


def build_fields(kind: str, topic: str, src: str, inst: str, seq: int, payload: Any,
                 enc: str = "json", prio: str = "normal", ts: Optional[int] = None,
                 corr: Optional[str] = None, reply: Optional[str] = None) -> Dict[str, bytes]:
    """The wire fields of one envelope, ready for ``redis.xadd(stream, fields)``.

    `payload` is any JSON/MessagePack-encodable value (normally a dict), encoded with `enc`;
    pass `bytes` to send already-encoded bytes as they are. `ts` defaults to now (Unix ns).
    Raises WireError for anything the Rust reader would reject.
    """
    if not valid_kind(kind):
        raise WireError("kind", f"{kind!r} must be 1-64 characters of [a-z0-9_]")
    err = topic_error(topic)
    if err:
        raise WireError("topic", err)
    if topic.split(".", 1)[0] != kind:
        raise WireError("topic", f"{topic!r} must start with the kind's name {kind!r}")
    if not valid_name(src):
        raise WireError("src", f"{src!r} must be 1-128 characters of [A-Za-z0-9_-]")
    if not valid_name(inst):
        raise WireError("inst", f"{inst!r} must be 1-128 characters of [A-Za-z0-9_-]")
    if ts is None:
        ts = time.time_ns()
    for name, n in (("seq", seq), ("ts", ts)):
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= U64_MAX:
            raise WireError(name, f"{n!r} is not a u64")
    if prio not in PRIORITIES:
        raise WireError("prio", f"{prio!r}: expected low, normal, high or critical")
    if enc not in ENCODINGS:
        raise WireError("enc", f"{enc!r}: expected json or msgpack")
    data = payload if isinstance(payload, (bytes, bytearray)) else encode_payload(payload, enc)
    fields = {
        "v": WIRE_VERSION.encode(),
        "id": message_id(src, inst, seq).encode(),
        "kind": kind.encode(),
        "topic": topic.encode(),
        "src": src.encode(),
        "inst": inst.encode(),
        "seq": str(seq).encode(),
        "ts": str(ts).encode(),
        "prio": prio.encode(),
        "enc": enc.encode(),
    }
    if corr:
        fields["corr"] = corr.encode("utf-8")
    if reply:
        fields["reply"] = reply.encode("utf-8")
    fields["payload"] = bytes(data)
    return fields


FieldsLike = Union[Mapping[Any, Any], Iterable[Tuple[Any, Any]]]


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, str):
        return x.encode("utf-8")
    return str(x).encode("utf-8")


def parse_fields(fields: FieldsLike, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 decode: bool = True) -> Dict[str, Any]:
    """Parses one entry's fields (as redis-py returns them: bytes or str keys and values).

    Applies the rules of the Rust reader; unknown fields are ignored. Returns a dict with every
    wire field as `str`, except `seq` and `ts` (`int`), `corr`/`reply` (`None` when absent) and
    `payload` (decoded with the entry's own `enc`, or the raw bytes when `decode` is false).
    Raises WireError naming the missing or bad field.
    """
    items = fields.items() if isinstance(fields, Mapping) else fields
    raw: Dict[str, bytes] = {}
    for k, v in items:
        key = _as_bytes(k).decode("utf-8", "replace")
        if key in FIELDS:
            raw[key] = _as_bytes(v)

    def req(name: str) -> bytes:
        if name not in raw:
            raise WireError(name, "missing")
        return raw[name]

    def text(name: str, b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(name, "not UTF-8") from None

    if req("v") != WIRE_VERSION.encode():
        raise WireError("v", f"unsupported version {raw['v']!r}, expected {WIRE_VERSION}")
    payload = req("payload")
    if len(payload) > max_payload:
        raise WireError("payload", f"{len(payload)} bytes exceeds the limit of {max_payload}")
    kind = text("kind", req("kind"))
    if not valid_kind(kind):
        raise WireError("kind", f"{kind!r} must be 1-64 characters of [a-z0-9_]")
    topic = text("topic", req("topic"))
    err = topic_error(topic)
    if err:
        raise WireError("topic", err)
    out: Dict[str, Any] = {"v": WIRE_VERSION}
    src = text("src", req("src"))
    inst = text("inst", req("inst"))
    for name, value in (("src", src), ("inst", inst)):
        if not valid_name(value):
            raise WireError(name, f"{value!r} must be 1-128 characters of [A-Za-z0-9_-]")
    nums = {}
    for name in ("seq", "ts"):
        s = text(name, req(name))
        if _U64_RE.fullmatch(s) is None or int(s) > U64_MAX:
            raise WireError(name, f"{s!r} is not a decimal u64")
        nums[name] = int(s)
    prio = text("prio", req("prio"))
    if prio not in PRIORITIES:
        raise WireError("prio", f"{prio!r}: expected low, normal, high or critical")
    enc = text("enc", req("enc"))
    if enc not in ENCODINGS:
        raise WireError("enc", f"{enc!r}: expected json or msgpack")
    msg_id = text("id", req("id"))
    expected = message_id(src, inst, nums["seq"])
    if msg_id != expected:
        raise WireError("id", f"{msg_id!r}, expected {expected!r} ({{src}}:{{inst}}:{{seq}})")
    out.update(id=msg_id, kind=kind, topic=topic, src=src, inst=inst, seq=nums["seq"],
               ts=nums["ts"], prio=prio, enc=enc)
    for name in ("corr", "reply"):
        b = raw.get(name)
        out[name] = text(name, b) if b else None
    out["payload"] = decode_payload(payload, enc) if decode else payload
    return out


# --- stream keys ------------------------------------------------------------------------------

def bus_of(kind: str, routes: Optional[Mapping[str, str]] = None) -> str:
    """The bus of a kind: `routes` overrides (kind -> "md"/"logic"), else the defaults."""
    if routes and kind in routes:
        bus = routes[kind]
        if bus not in BUSES:
            raise ValueError(f"route of {kind!r}: unknown bus {bus!r}, expected md or logic")
        return bus
    return BUS_MD if kind in MD_KINDS else BUS_LOGIC


def is_priority(kind: str, prio: str = "normal") -> bool:
    """Whether a message takes the priority lane: the critical kinds, or prio `critical`."""
    return kind in CRITICAL_KINDS or prio == "critical"


def kind_stream(kind: str, bus: Optional[str] = None, prefix: str = DEFAULT_PREFIX) -> str:
    """`{prefix}:{bus}:{kind}`, the normal lane of a kind."""
    return f"{prefix}:{bus or bus_of(kind)}:{kind}"


def priority_stream(bus: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`{prefix}:{bus}:priority`."""
    return f"{prefix}:{bus}:priority"


def dead_stream(bus: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`{prefix}:{bus}:dead`."""
    return f"{prefix}:{bus}:dead"


def reply_stream(bus: str, inst: str, prefix: str = DEFAULT_PREFIX) -> str:
    """`{prefix}:{bus}:reply:{inst}`, the reply stream of a requester instance."""
    return f"{prefix}:{bus}:reply:{inst}"


def partition_of(symbol: str, partitions: int) -> int:
    """The partition of a symbol on a MarketData bus with `[md] partitions = partitions`:
    CRC16 (XMODEM, the Redis Cluster key checksum) of the symbol, modulo the partitions."""
    if partitions <= 1:
        return 0
    return binascii.crc_hqx(symbol.encode(), 0) % partitions


def partition_stream(kind: str, partition: int, prefix: str = DEFAULT_PREFIX) -> str:
    """`{prefix}:md:{pK}:{kind}`, partition K of a MarketData kind's normal lane."""
    return f"{prefix}:{BUS_MD}:{{p{partition}}}:{kind}"


def stream_for(kind: str, prio: str = "normal", prefix: str = DEFAULT_PREFIX,
               routes: Optional[Mapping[str, str]] = None, topic: str = "",
               partitions: int = 1) -> str:
    """The one stream a message of this kind and priority is published to. With
    `[md] partitions` above 1, give the message's topic: its last segment (the symbol) picks
    the partition of a MarketData kind."""
    bus = bus_of(kind, routes)
    if is_priority(kind, prio):
        return priority_stream(bus, prefix)
    if bus == BUS_MD and partitions > 1:
        return partition_stream(kind, partition_of(topic.rsplit(".", 1)[-1], partitions), prefix)
    return kind_stream(kind, bus, prefix)


def streams_to_read(kind: str, prefix: str = DEFAULT_PREFIX,
                    routes: Optional[Mapping[str, str]] = None,
                    partitions: int = 1) -> Tuple[str, ...]:
    """The streams a subscriber of `kind` reads (its lane, if any, and its bus's priority lane;
    every partition of a partitioned MarketData kind); filter the entries of the priority lane
    on `kind`."""
    bus = bus_of(kind, routes)
    if kind in CRITICAL_KINDS:
        return (priority_stream(bus, prefix),)
    if bus == BUS_MD and partitions > 1:
        lanes = tuple(partition_stream(kind, p, prefix) for p in range(partitions))
        return lanes + (priority_stream(bus, prefix),)
    return (kind_stream(kind, bus, prefix), priority_stream(bus, prefix))


# --- Payload schemas (docs/schemas/, generated from the Rust types of dualbus-model) ---

# Kinds whose payload type depends on the topic's second segment (`market_data.quote.BTCUSDT`
# is a `market_data.quote`); every other kind has one schema, named after the kind.
TYPED_BY_TOPIC = frozenset({"market_data", "analytics_result"})


def schema_name(kind: str, topic: str) -> str:
    """The schema name of a payload: `risk_alert`, or `market_data.quote` for a quote."""
    if kind in TYPED_BY_TOPIC:
        parts = topic.split(".")
        if len(parts) > 1:
            return f"{kind}.{parts[1]}"
    return kind


def load_schemas(directory: str) -> dict:
    """Every `NAME.json` schema of a directory (docs/schemas), by name."""
    schemas = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".json"):
            with open(os.path.join(directory, entry), encoding="utf-8") as f:
                schemas[entry[:-len(".json")]] = json.load(f)
    if not schemas:
        raise ValueError(f"no schema (*.json) in {directory}")
    return schemas


def schema_problem(payload: Any, kind: str, topic: str, schemas: Mapping[str, Any]) -> Optional[str]:
    """Why a decoded payload does not follow its schema, or None when it does (or when its kind
    has no schema, like a custom kind). Needs the `jsonschema` package."""
    import jsonschema

    schema = schemas.get(schema_name(kind, topic))
    if schema is None:
        return None
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    where = "/".join(str(p) for p in e.absolute_path) or "(the payload)"
    return f"{schema_name(kind, topic)} schema: at {where}: {e.message}"
