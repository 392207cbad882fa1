"""The JSON Schema contract in ``schemas/`` against the code that implements it.

The input schemas must accept exactly the events :func:`app.decoding.decode_event`
accepts, and every trigger the detector writes must validate against the trigger
schema. What a JSON Schema cannot say is listed in ``DOCUMENTED EXCEPTIONS``
below and tested on its own, so nothing slips through as an unexplained skip.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import msgspec
import msgspec.inspect as mi
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable

from app.config import Catalogue, load_catalogue
from app.confirmations import CONFIRMATION_TYPE, ERASED, confirmation
from app.decoding import MAX_EVENT_BYTES, MAX_YEAR, MIN_YEAR, Reason, Rejection, decode_event
from app.detection import Decider, Detection
from app.detector import Detector
from app.events import (
    CLICKSTREAM_TYPES,
    CONSENT_TYPES,
    EVENT_TYPES,
    PRIVACY_TYPES,
    PURCHASE_TYPES,
    SEARCH_TYPES,
    ClickstreamEvent,
    ConsentEvent,
    ForgetRequest,
    Item,
    PurchaseEvent,
    SearchEvent,
    SuppressionEvent,
)
from app.journey import Stage
from app.pipeline import Pipeline
from app.policy import Policy, sha256_hex
from app.replay import replay
from app.settings import load_settings
from app.state.memory import MemoryStateStore
from app.triggers import (
    CONTENT_TYPE,
    DATA_CONTENT_TYPE,
    SPEC_VERSION,
    TriggerWriter,
    to_cloudevent,
    trigger_type,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
# Replays here check the trigger contract, so the engagement policy is set aside.
DETECTION_ONLY = ROOT / "fixtures" / "scenarios" / "detection-only.toml"
BASE = "https://schemas.micromoments.dev/"
SCHEMA_FILES = sorted(p.name for p in SCHEMAS.glob("*.json"))
# Each kind of input event, its schema file and its event types.
KIND_SCHEMAS = {
    "clickstream": "clickstream-event.v1.json",
    "search": "search-event.v1.json",
    "purchase": "purchase-event.v1.json",
    "consent": "consent-event.v1.json",
    "privacy": "privacy-request.v1.json",
}
EVENT_SCHEMA_FILES = tuple(KIND_SCHEMAS.values())
TRIGGER_SCHEMA_FILE = "micromoment-trigger.v1.json"
CONFIRMATION_SCHEMA_FILE = "privacy-confirmation.v1.json"
COMMON = BASE + "common.v1.json"


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return doc


DOCS = {name: _load(name) for name in SCHEMA_FILES}
# Every file in schemas/ and nothing else: a $ref to anything outside fails to resolve.
REGISTRY: Registry[Any] = Registry().with_resources(
    (doc["$id"], Resource.from_contents(doc)) for doc in DOCS.values()
)


def validator(schema: dict[str, Any] | str) -> Draft202012Validator:
    if isinstance(schema, str):
        schema = DOCS[schema]
    return Draft202012Validator(schema, registry=REGISTRY)


EVENT_VALIDATORS = {kind: validator(name) for kind, name in KIND_SCHEMAS.items()}
TRIGGER_VALIDATOR = validator(TRIGGER_SCHEMA_FILE)
CONFIRMATION_VALIDATOR = validator(CONFIRMATION_SCHEMA_FILE)
KINDS = {
    "clickstream": CLICKSTREAM_TYPES,
    "search": SEARCH_TYPES,
    "purchase": PURCHASE_TYPES,
    "consent": CONSENT_TYPES,
    "privacy": PRIVACY_TYPES,
}


def common_def(name: str) -> Draft202012Validator:
    return validator({"$ref": f"{COMMON}#/$defs/{name}"})


def schema_accepts(instance: Any) -> bool:
    """Valid against one of the event schemas (their ``event_type`` enums are disjoint).

    A known ``event_type`` goes straight to its kind's schema (the others reject it by their
    enums); anything else is tried against all of them.
    """
    kind = _kind_of(instance)
    validators = [EVENT_VALIDATORS[kind]] if kind is not None else EVENT_VALIDATORS.values()
    return sum(v.is_valid(instance) for v in validators) == 1


def _kind_of(event: Any) -> str | None:
    if isinstance(event, dict):
        for kind, types in KINDS.items():
            if event.get("event_type") in types:
                return kind
    return None


def decoder_accepts(instance: Any) -> bool:
    return not isinstance(decode_event(orjson.dumps(instance)), Rejection)


# --------------------------------------------------------------------------------------------
# DOCUMENTED EXCEPTIONS: what the decoder does that a JSON Schema cannot (or does not) express.
#
# 1. Size: an event over MAX_EVENT_BYTES (64 KiB) of JSON is rejected (``too_large``).
# 2. Integers: JSON Schema counts 2.0 as an integer; the decoder wants a JSON integer
#    literal (``2``) in ``results_count`` and ``items[].quantity``.
# 3. Leniency: the decoder also reads a space instead of ``T`` and an offset without a
#    colon (``+0530``); the schema asks for RFC 3339, so producers must not rely on these.
# 4. Rounding: beyond microseconds ``occurred_at`` is rounded before the year range check,
#    so ``2100-12-31T23:59:59.9999995Z`` is year 2101 to the decoder.
# --------------------------------------------------------------------------------------------

_LENIENT = re.compile(
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})(?P<sep>[Tt ])(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:?[0-9]{2})\Z"
)
_CARRY = re.compile(
    r"^(?P<year>[0-9]{4})-12-31(?P<sep>[Tt ])23:59:59\.9{6}[5-9][0-9]*(?P<rest>.*)$", re.DOTALL
)


def rfc3339_reading(value: str) -> str:
    """The RFC 3339 string the decoder reads ``value`` as (exceptions 3 and 4); else ``value``."""
    lenient = _LENIENT.match(value)
    if lenient is not None:
        offset = lenient["offset"]
        if len(offset) == 5:  # +HHMM
            offset = f"{offset[:3]}:{offset[3:]}"
        sep = "T" if lenient["sep"] == " " else lenient["sep"]
        value = f"{lenient['date']}{sep}{lenient['time']}{offset}"
    carry = _CARRY.match(value)
    if carry is not None:
        value = f"{int(carry['year']) + 1:04d}-01-01T00:00:00{carry['rest']}"
    return value


def has_integral_float(instance: Any) -> bool:
    """Exception 2: an integer field of the event's kind holding a float such as 2.0."""
    if not isinstance(instance, dict):
        return False
    event_type = instance.get("event_type")
    if event_type in SEARCH_TYPES:
        return isinstance(instance.get("results_count"), float)
    items = instance.get("items")
    return (
        event_type in PURCHASE_TYPES
        and isinstance(items, list)
        and any(isinstance(item, dict) and isinstance(item.get("quantity"), float) for item in items)
    )


def expected_decoder_verdict(instance: Any) -> bool:
    """What ``decode_event`` must say, derived from the schemas and the documented exceptions."""
    if has_integral_float(instance):
        return False
    zone = instance.get("timezone") if isinstance(instance, dict) else None
    if isinstance(zone, str) and not is_zone(zone):
        return False  # the README's exception: a time zone is checked against the IANA database
    if isinstance(instance, dict) and isinstance(instance.get("occurred_at"), str):
        instance = {**instance, "occurred_at": rfc3339_reading(instance["occurred_at"])}
    return schema_accepts(instance)


# ============================================================================================
# (a) The schemas themselves
# ============================================================================================


def test_schema_directory_holds_the_contract() -> None:
    assert set(SCHEMA_FILES) == {
        "common.v1.json",
        *EVENT_SCHEMA_FILES,
        TRIGGER_SCHEMA_FILE,
        CONFIRMATION_SCHEMA_FILE,
    }
    assert (SCHEMAS / "README.md").is_file()


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_is_a_valid_draft_2020_12_schema(name: str) -> None:
    doc = DOCS[name]
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == BASE + name
    assert doc["title"]
    assert doc["description"]


def _walk(node: Any, path: str = "#", *, rules: bool = True) -> Iterator[tuple[str, Any]]:
    """Every subschema with its JSON pointer; ``rules=False`` skips conditional ``if``/``then`` parts."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("examples", "const", "enum", "default") or (not rules and key in ("if", "then")):
                continue
            yield from _walk(value, f"{path}/{key}", rules=rules)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}", rules=rules)


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_ref_resolves_within_the_directory(name: str) -> None:
    doc = DOCS[name]
    resolver = REGISTRY.resolver(base_uri=doc["$id"])
    refs = [(path, node["$ref"]) for path, node in _walk(doc) if isinstance(node, dict) and "$ref" in node]
    if name in EVENT_SCHEMA_FILES:
        assert any(ref.startswith("common.v1.json#") for _, ref in refs), "envelope must come from common"
    for path, ref in refs:
        resolved = resolver.lookup(ref).contents
        assert isinstance(resolved, dict), f"{name} {path}: {ref}"


def test_an_unknown_ref_does_not_resolve() -> None:
    """The registry really is closed: the resolution test above can fail."""
    with pytest.raises(Unresolvable):
        REGISTRY.resolver(base_uri=COMMON).lookup("nowhere.v1.json#/$defs/id")


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_every_property_and_definition_is_described(name: str) -> None:
    undescribed = []
    for path, node in _walk(DOCS[name], rules=False):
        if not isinstance(node, dict):
            continue
        for group in ("properties", "$defs"):
            for key, sub in node.get(group, {}).items():
                if "description" not in sub:
                    undescribed.append(f"{path}/{group}/{key}")
    assert not undescribed


@pytest.mark.parametrize("name", [*EVENT_SCHEMA_FILES, TRIGGER_SCHEMA_FILE, CONFIRMATION_SCHEMA_FILE])
def test_examples_validate(name: str) -> None:
    examples = DOCS[name]["examples"]
    assert len(examples) >= 2
    for example_ in examples:
        errors = [e.message for e in validator(name).iter_errors(example_)]
        assert not errors, example_


@pytest.mark.parametrize("name", EVENT_SCHEMA_FILES)
def test_event_examples_decode(name: str) -> None:
    for example_ in DOCS[name]["examples"]:
        assert not isinstance(decode_event(orjson.dumps(example_)), Rejection), example_


@pytest.mark.parametrize("name", EVENT_SCHEMA_FILES)
def test_event_schemas_accept_unknown_fields(name: str) -> None:
    doc = DOCS[name]
    assert doc["additionalProperties"] is True
    assert DOCS["common.v1.json"]["$defs"]["envelope"]["additionalProperties"] is True


# ---- Enumerations and field lists agree with the code --------------------------------------


def test_event_type_enums_match_the_code() -> None:
    enums = {kind: set(DOCS[name]["properties"]["event_type"]["enum"]) for kind, name in KIND_SCHEMAS.items()}
    assert enums == KINDS
    assert set().union(*enums.values()) == EVENT_TYPES


def test_consent_schema_applies_each_types_fields() -> None:
    """``consent`` and ``suppression`` share a file: each type's own fields apply to it alone."""
    doc = DOCS["consent-event.v1.json"]
    rules = {
        rule["if"]["properties"]["event_type"]["const"]: rule["then"]["$ref"]
        for rule in doc["allOf"]
        if "if" in rule
    }
    assert rules == {t: f"#/$defs/{t}" for t in CONSENT_TYPES}
    assert all("event_type" in rule["if"]["required"] for rule in doc["allOf"] if "if" in rule)


def _resolve(node: dict[str, Any], base: str) -> tuple[dict[str, Any], bool]:
    """A property schema flattened: ``$ref``s followed, ``anyOf [X, null]`` read as nullable X."""
    merged: dict[str, Any] = {}
    nullable = False
    pending = [(node, REGISTRY.resolver(base_uri=base))]
    while pending:
        current, resolver = pending.pop()
        for key, value in current.items():
            if key == "$ref":
                resolved = resolver.lookup(value)
                pending.append((resolved.contents, resolved.resolver))
            elif key == "anyOf":
                branches = [b for b in value if b != {"type": "null"}]
                nullable = nullable or len(branches) < len(value)
                assert len(branches) == 1
                pending.append((branches[0], resolver))
            elif key == "type" and isinstance(value, list):
                nullable = nullable or "null" in value
                (merged["type"],) = [t for t in value if t != "null"]
            elif key not in ("description", "$comment", "default", "examples"):
                merged.setdefault(key, value)
    return merged, nullable


_SCHEMA_TYPE = {
    mi.StrType: "string",
    mi.FloatType: "number",
    mi.IntType: "integer",
    mi.ListType: "array",
    mi.DictType: "object",
    mi.DateTimeType: "string",
}


def _constraints(t: mi.Type) -> dict[str, Any]:
    """The msgspec constraints of ``t`` under their JSON Schema names (patterns are tested by behaviour)."""
    out: dict[str, Any] = {"type": _SCHEMA_TYPE[type(t)]}
    if isinstance(t, mi.StrType):
        out |= {"minLength": t.min_length, "maxLength": t.max_length, "pattern": t.pattern is not None}
    elif isinstance(t, mi.FloatType | mi.IntType):
        assert t.gt is None
        assert t.lt is None
        assert t.multiple_of is None
        out |= {"minimum": t.ge, "maximum": t.le}
    elif isinstance(t, mi.ListType):
        out |= {"minItems": t.min_length, "maxItems": t.max_length}
    elif isinstance(t, mi.DictType):
        out |= {"minProperties": t.min_length, "maxProperties": t.max_length}
    elif isinstance(t, mi.DateTimeType):
        out |= {"pattern": True}
    return {k: v for k, v in out.items() if v is not None and v is not False}


def _schema_constraints(prop: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "type",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
    )
    out = {k: prop[k] for k in keys if k in prop}
    if "pattern" in prop:
        out["pattern"] = True
    if "enum" in prop:  # event_type: a string narrowed to the kind's types
        out["type"] = "string"
    return out


# Structs whose fields a schema shared by several types keeps in ``$defs/<event_type>``.
OWN_FIELDS = {ConsentEvent: "consent", SuppressionEvent: "suppression"}


def _struct_schema(struct: type[msgspec.Struct], name: str) -> tuple[dict[str, tuple[Any, str]], set[str]]:
    """Properties (envelope merged in, each with its base URI) and required names of ``struct``'s schema."""
    doc = DOCS[name]
    if struct is Item:
        item = doc["$defs"]["item"]
        return {k: (v, doc["$id"]) for k, v in item["properties"].items()}, set(item["required"])
    envelope = DOCS["common.v1.json"]["$defs"]["envelope"]
    props = {k: (v, COMMON) for k, v in envelope["properties"].items()}
    props |= {k: (v, doc["$id"]) for k, v in doc["properties"].items()}
    required = set(doc["required"]) | set(envelope["required"])
    if struct in OWN_FIELDS:
        own = doc["$defs"][OWN_FIELDS[struct]]
        props |= {k: (v, doc["$id"]) for k, v in own["properties"].items()}
        required |= set(own["required"])
    return props, required


@pytest.mark.parametrize(
    ("struct", "name"),
    [
        (ClickstreamEvent, "clickstream-event.v1.json"),
        (SearchEvent, "search-event.v1.json"),
        (PurchaseEvent, "purchase-event.v1.json"),
        (Item, "purchase-event.v1.json"),
        (ConsentEvent, "consent-event.v1.json"),
        (SuppressionEvent, "consent-event.v1.json"),
        (ForgetRequest, "privacy-request.v1.json"),
    ],
)
def test_fields_match_the_structs(struct: type[msgspec.Struct], name: str) -> None:
    """Names, required-ness, nullability, types, lengths and bounds, field by field."""
    props, required = _struct_schema(struct, name)
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    fields = {f.name: f for f in info.fields}
    tag = struct.__struct_config__.tag_field  # event_type: not a field, msgspec's tag
    assert set(props) == set(fields) | ({tag} if tag else set())
    assert required == {n for n, f in fields.items() if f.required} | ({tag} if tag else set())
    for field_name, field in fields.items():
        flat, nullable = _resolve(*props[field_name])
        code_type = field.type
        code_nullable = isinstance(code_type, mi.UnionType)
        if code_nullable:
            (code_type,) = [t for t in code_type.types if not isinstance(t, mi.NoneType)]
        assert nullable == code_nullable, field_name
        if isinstance(code_type, mi.StructType):
            continue
        if isinstance(code_type, mi.ListType):
            assert flat["type"] == "array"
            assert flat.get("maxItems") == code_type.max_length, field_name
            continue
        if isinstance(code_type, mi.LiteralType):
            assert set(flat) == {"enum"}, field_name
            assert sorted(flat["enum"]) == sorted(code_type.values), field_name
            continue
        code = _constraints(code_type)
        if field_name in CHARACTER_RULES:  # checked by the structs' __post_init__, not msgspec
            code["pattern"] = True
        assert _schema_constraints(flat) == code, field_name


# ---- The value types, one by one: same strings accepted -------------------------------------

# White space in Python's sense, and the characters around the edges of the id class.
_TRICKY = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
    "\x00\x01\x7f\x80\x84\x86\x9f\u200b\u2060\ufeff\U0001f600"
    "aZz09_+-/.:Tt"
)
_chars = st.one_of(
    st.sampled_from(_TRICKY),
    st.characters(codec="ascii"),
    st.characters(exclude_categories=["Cs"]),
)
_LIMITS = (0, 1, 2, 3, 4, 31, 32, 33, 63, 64, 65, 127, 128, 129, 511, 512, 513, 2047, 2048, 2049)


def strings() -> st.SearchStrategy[str]:
    """Short strings of tricky characters, and strings right at the length limits."""
    at_limit = st.builds(
        lambda c, n, tail: (c * n)[: max(n - len(tail), 0)] + tail if n else tail,
        st.sampled_from(["a", "A", "é", "\U0001f600", "x-1", "UTC"]),
        st.sampled_from(_LIMITS),
        st.sampled_from(["", "", "\n", " ", "\x00", "B"]),
    )
    return st.one_of(
        st.text(_chars, max_size=8), at_limit, st.text(_chars, max_size=8).map(lambda s: s + "\n")
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.one_of(json_scalars, st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)

# Fields whose character rules (the schemas' patterns) the structs check themselves.
CHARACTER_RULES = {
    "event_id",
    "customer_id",
    "session_id",
    "product_id",
    "order_id",
    "currency",
    "channel",
    "timezone",
}

# Each value type, and a field of a product view that has it: the decoder is asked end to end.
VALUE_TYPES = {
    "id": "customer_id",
    "token": "device",
    "text": "page",
    "currency": "currency",
    "channel": "channel",
    "timezone": "timezone",
    "amount": "price",
}


def _code_accepts(value: Any, field: str) -> bool:
    event = {
        "event_id": "e1",
        "customer_id": "c1",
        "event_type": "product_view",
        "occurred_at": "2026-11-25T10:00:00Z",
        field: value,
    }
    return not isinstance(decode_event(orjson.dumps(event)), Rejection)


@pytest.mark.parametrize("name", sorted(VALUE_TYPES))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.one_of(
        strings(),
        json_scalars,
        st.from_regex(r"\A[A-Z]{3}\n?\Z"),
        st.from_regex(r"\A[a-z][a-z0-9_]{0,33}\n?\Z"),
        st.from_regex(r"\A[A-Za-z0-9_+/\-]{1,66}\n?\Z"),
    )
)
@example(value="c1\n")
@example(value="EUR\n")
@example(value="Europe/Paris")
@example(value="Europe")
@example(value=1e9)
@example(value=-0.0)
def test_value_types_agree(name: str, value: Any) -> None:
    if value is None and VALUE_TYPES[name] != "customer_id":
        return  # null in an optional field: nullability is compared field by field above
    expected = common_def(name).is_valid(value) and (name != "timezone" or is_zone(value))
    assert expected == _code_accepts(value, VALUE_TYPES[name]), repr(value)


def is_zone(name: str) -> bool:
    """Whether ``name`` names a zone of the IANA database (the README's exception to the pattern)."""
    return name in ZONES


ZONES = frozenset(available_timezones())


@pytest.mark.parametrize("zone", ["Europe", "America", "Mars/Olympus", "posixrules/x", "Etc"])
def test_a_time_zone_of_the_right_shape_that_is_no_zone_is_rejected(zone: str) -> None:
    assert common_def("timezone").is_valid(zone)
    assert not _code_accepts(zone, "timezone")


# ---- occurred_at ------------------------------------------------------------------------------


def _two(n: int) -> str:
    return f"{n:02d}"


_YEARS = ["1999", "2000", "2004", "2024", "2028", "2096", "2099", "2100", "2101"]
_YEARS += ["0000", "9999", "202", "20245"]
_OFFSETS = ["Z", "z", "+00:00", "-00:00", "+05:30", "-08:00", "+23:59", "+24:00", "+0530", "-0800"]
_OFFSETS += ["+05", "+5:30", "+05:60", " Z", "", "UTC", "+05:30:00"]
timestamp_parts = st.tuples(
    st.one_of(st.sampled_from(_YEARS), st.integers(1990, 2110).map(str)),
    st.one_of(st.integers(0, 13).map(_two), st.just("1")),
    st.one_of(st.integers(0, 32).map(_two), st.sampled_from(["29", "30", "31", "5"])),
    st.sampled_from(["T", "t", " ", "_", ""]),
    st.integers(0, 25).map(_two),
    st.integers(0, 61).map(_two),
    st.integers(0, 61).map(_two),
    st.one_of(
        st.sampled_from(["", ".", ".9999995", ".9999999", ".99999949", ".000"]),
        st.text("0123456789", min_size=1, max_size=10).map(lambda d: "." + d),
    ),
    st.one_of(
        st.sampled_from(_OFFSETS),
        st.builds(
            lambda s, h, m, colon: f"{s}{h:02d}{colon}{m:02d}",
            st.sampled_from("+-"),
            st.integers(0, 25),
            st.integers(0, 61),
            st.sampled_from([":", ":", ""]),
        ),
    ),
    st.sampled_from(["", "", "", "\n", " "]),
)


def _join(parts: tuple[str, ...]) -> str:
    year, month, day, sep, hour, minute, second, fraction, offset, tail = parts
    return f"{year}-{month}-{day}{sep}{hour}:{minute}:{second}{fraction}{offset}{tail}"


_offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-(24 * 60 - 1), 24 * 60 - 1)
)
iso_datetimes = st.builds(
    lambda d, spec: d.isoformat(timespec=spec),
    st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2105, 12, 31), timezones=_offsets),
    st.sampled_from(["seconds", "milliseconds", "microseconds", "auto"]),
)
timestamps = st.one_of(timestamp_parts.map(_join), iso_datetimes, strings(), json_scalars)


def _event_at(occurred_at: Any) -> dict[str, Any]:
    return {"event_id": "e1", "customer_id": "c1", "event_type": "page_view", "occurred_at": occurred_at}


@settings(max_examples=1500, deadline=None)
@given(value=timestamps)
@example(value="2100-12-31T23:59:59.9999995Z")
@example(value="1999-12-31T23:59:59.9999995Z")
@example(value="2026-11-25 10:00:00+0530")
@example(value="2028-02-29T10:00:00Z")
@example(value="2100-02-29T10:00:00Z")
@example(value="2026-11-25T10:00:00Z\n")
def test_occurred_at_agrees(value: Any) -> None:
    decoded = decoder_accepts(_event_at(value))
    if isinstance(value, str):
        reading = rfc3339_reading(value)
        assert decoded == common_def("timestamp").is_valid(reading), (value, reading)
        if reading != value and _LENIENT.match(value) and not _CARRY.match(value):
            assert not common_def("timestamp").is_valid(value), "leniency must stay outside the contract"
    else:
        assert not decoded
        assert not common_def("timestamp").is_valid(value)


def test_year_range_in_the_pattern_is_the_decoders() -> None:
    ts = common_def("timestamp")
    for year, inside in [(MIN_YEAR - 1, False), (MIN_YEAR, True), (MAX_YEAR, True), (MAX_YEAR + 1, False)]:
        value = f"{year:04d}-06-01T00:00:00Z"
        assert ts.is_valid(value) is inside
        assert decoder_accepts(_event_at(value)) is inside


# ============================================================================================
# (b) Valid events: both the decoder and the schemas accept them
# ============================================================================================

_E = {"event_id": "e-1", "customer_id": "cust-1", "occurred_at": "2026-11-25T10:00:00Z"}
VALID = {
    "page_view minimal": {**_E, "event_type": "page_view"},
    "product_view full": {
        **_E,
        "event_type": "product_view",
        "session_id": "s-1",
        "channel": "web",
        "device": "ios",
        "timezone": "Asia/Kolkata",
        "page": "/p/sku-1",
        "page_type": "product",
        "product_id": "sku-1",
        "category": "headphones",
        "price": 99.5,
        "currency": "EUR",
        "referrer": "https://example.com/",
    },
    "offset +05:30": {**_E, "event_type": "page_view", "occurred_at": "2026-11-25T15:30:00+05:30"},
    "offset -08:00, fractional": {
        **_E,
        "event_type": "page_view",
        "occurred_at": "2026-11-25T02:00:00.123456-08:00",
    },
    "lower-case t and z": {**_E, "event_type": "page_view", "occurred_at": "2026-11-25t10:00:00.5z"},
    "leap day": {**_E, "event_type": "page_view", "occurred_at": "2028-02-29T10:00:00Z"},
    "year bounds": {**_E, "event_type": "page_view", "occurred_at": "2100-12-31T23:59:59-05:00"},
    "explicit nulls": {
        **_E,
        "event_type": "product_view",
        "session_id": None,
        "channel": None,
        "device": None,
        "timezone": None,
        "price": None,
        "currency": None,
        "product_id": None,
        "step": None,
    },
    "unknown extra fields": {
        **_E,
        "event_type": "error",
        "error_code": "payment_declined",
        "x_debug": {"a": [1, 2]},
        "schema_version": 7,
        "customer_id_hash": None,
    },
    "checkout step": {**_E, "event_type": "checkout_step", "step": "payment"},
    "ids at their limits": {
        **_E,
        "event_type": "page_view",
        "event_id": "e" * 128,
        "customer_id": "\u00e9" * 128,
    },
    "non-ASCII id": {**_E, "event_type": "page_view", "customer_id": "kunde-\u00fc\U0001f600"},
    "empty page text": {**_E, "event_type": "page_view", "page": ""},
    "price 0": {**_E, "event_type": "add_to_cart", "product_id": "p", "price": 0},
    "price max": {**_E, "event_type": "add_to_cart", "product_id": "p", "price": 1e9},
    "search minimal": {**_E, "event_type": "search", "query": "headphones"},
    "search full": {
        **_E,
        "event_type": "search",
        "query": "q" * 512,
        "results_count": 0,
        "filters": {f"f{i}": i for i in range(32)},
        "sort": "price_asc",
    },
    "search nulls": {
        **_E,
        "event_type": "search",
        "query": "x",
        "results_count": None,
        "filters": None,
        "sort": None,
    },
    "search with extra": {**_E, "event_type": "search", "query": "near me", "page": 3, "ab_test": "B"},
    "purchase minimal": {**_E, "event_type": "purchase", "order_id": "o-1"},
    "purchase full": {
        **_E,
        "event_type": "purchase",
        "order_id": "o-1",
        "total": 148.98,
        "currency": "USD",
        "items": [
            {"product_id": "p1", "category": "cables", "price": 9.99, "quantity": 10_000},
            {"product_id": "p2", "category": None, "price": None, "gift_wrap": True},
        ],
    },
    "purchase 100 items": {
        **_E,
        "event_type": "purchase",
        "order_id": "o",
        "items": [{"product_id": "p"}] * 100,
    },
    "refund": {**_E, "event_type": "refund", "order_id": "o-1", "items": []},
    "consent granted": {**_E, "event_type": "consent", "status": "granted", "purpose": "marketing"},
    "consent revoked, full envelope": {
        **_E,
        "event_type": "consent",
        "status": "revoked",
        "purpose": "p" * 64,
        "session_id": "s-1",
        "channel": "email",
        "timezone": "Europe/Paris",
    },
    "consent with the other type's fields": {
        **_E,
        "event_type": "consent",
        "status": "granted",
        "purpose": "marketing",
        "action": "delete everything",
        "reason": 7,
    },
    "suppression add": {**_E, "event_type": "suppression", "action": "add", "reason": "complaint"},
    "suppression remove, null reason": {
        **_E,
        "event_type": "suppression",
        "action": "remove",
        "reason": None,
    },
    "suppression with the other type's fields": {
        **_E,
        "event_type": "suppression",
        "action": "add",
        "status": "maybe",
        "purpose": None,
    },
    "forget minimal": {**_E, "event_type": "forget"},
    "forget with request_id": {**_E, "event_type": "forget", "request_id": "DSR-2026-0042"},
    "forget request_id at its limit, null session": {
        **_E,
        "event_type": "forget",
        "request_id": "r" * 128,
        "session_id": None,
    },
}
VALID |= {f"type {t}": {**_E, "event_type": t} for t in sorted(CLICKSTREAM_TYPES)}


@pytest.mark.parametrize("event", list(VALID.values()), ids=list(VALID))
def test_valid_events_pass_both(event: dict[str, Any]) -> None:
    decoded = decode_event(orjson.dumps(event))
    assert not isinstance(decoded, Rejection), decoded
    errors = [e.message for v in EVENT_VALIDATORS.values() for e in v.iter_errors(event)]
    assert schema_accepts(event), errors


# ============================================================================================
# (c) Invalid events: both reject them
# ============================================================================================

INVALID: dict[str, tuple[Any, Reason]] = {
    "missing event_id": (
        {k: v for k, v in _E.items() if k != "event_id"} | {"event_type": "page_view"},
        Reason.MISSING_FIELD,
    ),
    "missing customer_id": (
        {"event_id": "e", "event_type": "page_view", "occurred_at": _E["occurred_at"]},
        Reason.MISSING_FIELD,
    ),
    "missing occurred_at": (
        {"event_id": "e", "customer_id": "c", "event_type": "page_view"},
        Reason.MISSING_FIELD,
    ),
    "missing event_type": (dict(_E), Reason.MISSING_FIELD),
    "null event_type": ({**_E, "event_type": None}, Reason.WRONG_TYPE),
    "missing query": ({**_E, "event_type": "search"}, Reason.MISSING_FIELD),
    "missing order_id": ({**_E, "event_type": "purchase"}, Reason.MISSING_FIELD),
    "item without product_id": (
        {**_E, "event_type": "purchase", "order_id": "o", "items": [{"price": 1}]},
        Reason.MISSING_FIELD,
    ),
    "event_id a number": ({**_E, "event_type": "page_view", "event_id": 42}, Reason.WRONG_TYPE),
    "event_type a number": ({**_E, "event_type": 3}, Reason.WRONG_TYPE),
    "price a string": ({**_E, "event_type": "product_view", "price": "9.99"}, Reason.WRONG_TYPE),
    "price a boolean": ({**_E, "event_type": "product_view", "price": True}, Reason.WRONG_TYPE),
    "results_count a float": (
        {**_E, "event_type": "search", "query": "x", "results_count": 2.5},
        Reason.WRONG_TYPE,
    ),
    "filters a list": ({**_E, "event_type": "search", "query": "x", "filters": ["price"]}, Reason.WRONG_TYPE),
    "items null": ({**_E, "event_type": "purchase", "order_id": "o", "items": None}, Reason.WRONG_TYPE),
    "items an object": (
        {**_E, "event_type": "purchase", "order_id": "o", "items": {"product_id": "p"}},
        Reason.WRONG_TYPE,
    ),
    "order_id null": ({**_E, "event_type": "purchase", "order_id": None}, Reason.WRONG_TYPE),
    "quantity null": (
        {**_E, "event_type": "purchase", "order_id": "o", "items": [{"product_id": "p", "quantity": None}]},
        Reason.WRONG_TYPE,
    ),
    "occurred_at a number": (
        {**_E, "event_type": "page_view", "occurred_at": 1764064800000},
        Reason.BAD_TIMESTAMP,
    ),
    "event_id too long": ({**_E, "event_type": "page_view", "event_id": "e" * 129}, Reason.FIELD_TOO_LONG),
    "customer_id too long (code points)": (
        {**_E, "event_type": "page_view", "customer_id": "\U0001f600" * 129},
        Reason.FIELD_TOO_LONG,
    ),
    "page too long": ({**_E, "event_type": "page_view", "page": "/" * 2049}, Reason.FIELD_TOO_LONG),
    "device too long": ({**_E, "event_type": "page_view", "device": "d" * 65}, Reason.FIELD_TOO_LONG),
    "channel too long": ({**_E, "event_type": "page_view", "channel": "c" * 33}, Reason.FIELD_TOO_LONG),
    "query too long": ({**_E, "event_type": "search", "query": "q" * 513}, Reason.FIELD_TOO_LONG),
    "too many filters": (
        {**_E, "event_type": "search", "query": "x", "filters": {f"f{i}": i for i in range(33)}},
        Reason.FIELD_TOO_LONG,
    ),
    "too many items": (
        {**_E, "event_type": "purchase", "order_id": "o", "items": [{"product_id": "p"}] * 101},
        Reason.FIELD_TOO_LONG,
    ),
    "empty event_id": ({**_E, "event_type": "page_view", "event_id": ""}, Reason.INVALID_VALUE),
    "empty query": ({**_E, "event_type": "search", "query": ""}, Reason.INVALID_VALUE),
    "empty device": ({**_E, "event_type": "page_view", "device": ""}, Reason.INVALID_VALUE),
    "currency lower-case": ({**_E, "event_type": "product_view", "currency": "eur"}, Reason.INVALID_VALUE),
    "currency four letters": ({**_E, "event_type": "product_view", "currency": "EURO"}, Reason.INVALID_VALUE),
    "currency with newline": (
        {**_E, "event_type": "purchase", "order_id": "o", "currency": "EUR\n"},
        Reason.INVALID_VALUE,
    ),
    "negative price": ({**_E, "event_type": "product_view", "price": -0.01}, Reason.INVALID_VALUE),
    "price over 1e9": ({**_E, "event_type": "product_view", "price": 1e9 + 1}, Reason.INVALID_VALUE),
    "negative total": ({**_E, "event_type": "purchase", "order_id": "o", "total": -5}, Reason.INVALID_VALUE),
    "quantity 0": (
        {**_E, "event_type": "purchase", "order_id": "o", "items": [{"product_id": "p", "quantity": 0}]},
        Reason.INVALID_VALUE,
    ),
    "quantity 10001": (
        {**_E, "event_type": "purchase", "order_id": "o", "items": [{"product_id": "p", "quantity": 10_001}]},
        Reason.INVALID_VALUE,
    ),
    "negative results_count": (
        {**_E, "event_type": "search", "query": "x", "results_count": -1},
        Reason.INVALID_VALUE,
    ),
    "customer_id with a space": (
        {**_E, "event_type": "page_view", "customer_id": "cust 1"},
        Reason.INVALID_VALUE,
    ),
    "customer_id with a tab": (
        {**_E, "event_type": "page_view", "customer_id": "cust\t1"},
        Reason.INVALID_VALUE,
    ),
    "customer_id trailing newline": (
        {**_E, "event_type": "page_view", "customer_id": "cust-1\n"},
        Reason.INVALID_VALUE,
    ),
    "customer_id NBSP": (
        {**_E, "event_type": "page_view", "customer_id": "cust\u00a01"},
        Reason.INVALID_VALUE,
    ),
    "customer_id ideographic space": (
        {**_E, "event_type": "page_view", "customer_id": "c\u3000"},
        Reason.INVALID_VALUE,
    ),
    "event_id control char": ({**_E, "event_type": "page_view", "event_id": "e\x07"}, Reason.INVALID_VALUE),
    "product_id DEL": ({**_E, "event_type": "product_view", "product_id": "p\x7f"}, Reason.INVALID_VALUE),
    "channel upper-case": ({**_E, "event_type": "page_view", "channel": "Web"}, Reason.INVALID_VALUE),
    "channel starts with digit": ({**_E, "event_type": "page_view", "channel": "1web"}, Reason.INVALID_VALUE),
    "timezone with space": (
        {**_E, "event_type": "page_view", "timezone": "Europe Paris"},
        Reason.INVALID_VALUE,
    ),
    "timestamp without offset": (
        {**_E, "event_type": "page_view", "occurred_at": "2026-11-25T10:00:00"},
        Reason.BAD_TIMESTAMP,
    ),
    "date only": ({**_E, "event_type": "page_view", "occurred_at": "2026-11-25"}, Reason.BAD_TIMESTAMP),
    "epoch millis as string": (
        {**_E, "event_type": "page_view", "occurred_at": "1764064800000"},
        Reason.BAD_TIMESTAMP,
    ),
    "February 30": (
        {**_E, "event_type": "page_view", "occurred_at": "2026-02-30T10:00:00Z"},
        Reason.BAD_TIMESTAMP,
    ),
    "not a leap year": (
        {**_E, "event_type": "page_view", "occurred_at": "2100-02-29T10:00:00Z"},
        Reason.BAD_TIMESTAMP,
    ),
    "hour 24": (
        {**_E, "event_type": "page_view", "occurred_at": "2026-11-25T24:00:00Z"},
        Reason.BAD_TIMESTAMP,
    ),
    "leap second": (
        {**_E, "event_type": "page_view", "occurred_at": "2026-12-31T23:59:60Z"},
        Reason.BAD_TIMESTAMP,
    ),
    "year 1999": (
        {**_E, "event_type": "page_view", "occurred_at": "1999-12-31T23:59:59Z"},
        Reason.TIMESTAMP_OUT_OF_RANGE,
    ),
    "year 2101": (
        {**_E, "event_type": "page_view", "occurred_at": "2101-01-01T00:00:00+01:00"},
        Reason.TIMESTAMP_OUT_OF_RANGE,
    ),
    "consent without status": (
        {**_E, "event_type": "consent", "purpose": "marketing"},
        Reason.MISSING_FIELD,
    ),
    "consent without purpose": ({**_E, "event_type": "consent", "status": "granted"}, Reason.MISSING_FIELD),
    "consent status unknown": (
        {**_E, "event_type": "consent", "status": "maybe", "purpose": "marketing"},
        Reason.INVALID_VALUE,
    ),
    "consent status upper-case": (
        {**_E, "event_type": "consent", "status": "GRANTED", "purpose": "marketing"},
        Reason.INVALID_VALUE,
    ),
    "consent status null": (
        {**_E, "event_type": "consent", "status": None, "purpose": "marketing"},
        Reason.WRONG_TYPE,
    ),
    "consent status a boolean": (
        {**_E, "event_type": "consent", "status": True, "purpose": "marketing"},
        Reason.WRONG_TYPE,
    ),
    "consent purpose empty": (
        {**_E, "event_type": "consent", "status": "granted", "purpose": ""},
        Reason.INVALID_VALUE,
    ),
    "consent purpose too long": (
        {**_E, "event_type": "consent", "status": "granted", "purpose": "p" * 65},
        Reason.FIELD_TOO_LONG,
    ),
    "suppression without action": ({**_E, "event_type": "suppression"}, Reason.MISSING_FIELD),
    "suppression action unknown": (
        {**_E, "event_type": "suppression", "action": "delete"},
        Reason.INVALID_VALUE,
    ),
    "suppression reason a number": (
        {**_E, "event_type": "suppression", "action": "add", "reason": 3},
        Reason.WRONG_TYPE,
    ),
    "consent customer_id with a space": (
        {**_E, "event_type": "consent", "status": "revoked", "purpose": "marketing", "customer_id": "c 1"},
        Reason.INVALID_VALUE,
    ),
    "forget request_id empty": ({**_E, "event_type": "forget", "request_id": ""}, Reason.INVALID_VALUE),
    "forget request_id too long": (
        {**_E, "event_type": "forget", "request_id": "r" * 129},
        Reason.FIELD_TOO_LONG,
    ),
    "forget request_id a number": ({**_E, "event_type": "forget", "request_id": 42}, Reason.WRONG_TYPE),
    "forget without customer_id": (
        {"event_id": "e", "event_type": "forget", "occurred_at": _E["occurred_at"]},
        Reason.MISSING_FIELD,
    ),
    "forget bad timestamp": ({**_E, "event_type": "forget", "occurred_at": "tomorrow"}, Reason.BAD_TIMESTAMP),
    "unknown event_type": ({**_E, "event_type": "click"}, Reason.UNKNOWN_EVENT_TYPE),
    "consent_granted is not a type": ({**_E, "event_type": "consent_granted"}, Reason.UNKNOWN_EVENT_TYPE),
    "event_type wrong case": ({**_E, "event_type": "PAGE_VIEW"}, Reason.UNKNOWN_EVENT_TYPE),
    "JSON array": ([_E], Reason.NOT_OBJECT),
    "JSON string": ("page_view", Reason.NOT_OBJECT),
    "JSON number": (42, Reason.NOT_OBJECT),
    "JSON null": (None, Reason.NOT_OBJECT),
}


@pytest.mark.parametrize(("event", "reason"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_events_fail_both(event: Any, reason: Reason) -> None:
    decoded = decode_event(orjson.dumps(event))
    assert isinstance(decoded, Rejection)
    assert decoded.reason is reason, decoded
    assert not schema_accepts(event)
    kind = _kind_of(event)
    if kind is not None:  # both object to the same field
        errors = list(EVENT_VALIDATORS[kind].iter_errors(event))
        assert {_schema_error_field(e) for e in errors} == {_decoder_error_field(decoded)}, errors


def _schema_error_field(error: ValidationError) -> str:
    if error.absolute_path:
        return str(error.absolute_path[0])
    assert error.validator == "required", error
    missing = re.match(r"'(\w+)' is a required property", error.message)
    assert missing is not None
    return missing[1]


def _decoder_error_field(rejection: Rejection) -> str:
    if rejection.reason is Reason.TIMESTAMP_OUT_OF_RANGE:
        return "occurred_at"
    found = re.search(r"at `\$\.(\w+)", rejection.detail) or re.search(r"field `(\w+)`", rejection.detail)
    assert found is not None, rejection
    return found[1]


def test_invalid_events_are_otherwise_valid() -> None:
    """Each invalid example breaks one rule: fixing that field makes it valid (no accidental rejections)."""
    fixes = {
        "missing event_id": {"event_id": "e"},
        "price a string": {"price": 9.99},
        "currency with newline": {"currency": "EUR"},
        "quantity 0": {"items": [{"product_id": "p", "quantity": 1}]},
        "customer_id trailing newline": {"customer_id": "cust-1"},
        "timestamp without offset": {"occurred_at": "2026-11-25T10:00:00Z"},
        "year 2101": {"occurred_at": "2100-01-01T00:00:00+01:00"},
        "consent status unknown": {"status": "revoked"},
        "suppression without action": {"action": "remove"},
        "forget request_id too long": {"request_id": "r" * 128},
    }
    for name, fix in fixes.items():
        fixed = {**INVALID[name][0], **fix}
        assert decoder_accepts(fixed), name
        assert schema_accepts(fixed), name


def test_not_json_is_rejected() -> None:
    rejected = decode_event(b"{not json")
    assert isinstance(rejected, Rejection)
    assert rejected.reason is Reason.NOT_JSON


# ============================================================================================
# The documented exceptions, each pinned so a change in either direction is noticed
# ============================================================================================


def test_size_limit_is_outside_the_schema() -> None:
    event = {**_E, "event_type": "page_view", "padding": ""}
    room = MAX_EVENT_BYTES - len(orjson.dumps(event))
    at_limit = {**event, "padding": "x" * room}
    over = {**event, "padding": "x" * (room + 1)}
    assert len(orjson.dumps(at_limit)) == MAX_EVENT_BYTES
    assert decoder_accepts(at_limit)
    assert schema_accepts(at_limit)
    assert schema_accepts(over)
    rejected = decode_event(orjson.dumps(over))
    assert isinstance(rejected, Rejection)
    assert rejected.reason is Reason.TOO_LARGE


@pytest.mark.parametrize(
    "event",
    [
        {**_E, "event_type": "search", "query": "x", "results_count": 3.0},
        {**_E, "event_type": "purchase", "order_id": "o", "items": [{"product_id": "p", "quantity": 2.0}]},
    ],
)
def test_integral_floats_are_integers_only_to_the_schema(event: dict[str, Any]) -> None:
    assert schema_accepts(event)
    rejected = decode_event(orjson.dumps(event))
    assert isinstance(rejected, Rejection)
    assert rejected.reason is Reason.WRONG_TYPE


@pytest.mark.parametrize(
    ("lenient", "strict"),
    [
        ("2026-11-25 10:00:00Z", "2026-11-25T10:00:00Z"),
        ("2026-11-25T10:00:00+0530", "2026-11-25T10:00:00+05:30"),
        ("2026-11-25 10:00:00.5-0800", "2026-11-25T10:00:00.5-08:00"),
    ],
)
def test_decoder_leniency_is_not_part_of_the_contract(lenient: str, strict: str) -> None:
    assert rfc3339_reading(lenient) == strict
    assert not schema_accepts(_event_at(lenient))
    assert schema_accepts(_event_at(strict))
    loose, exact = (
        decode_event(orjson.dumps(_event_at(lenient))),
        decode_event(orjson.dumps(_event_at(strict))),
    )
    assert not isinstance(loose, Rejection)
    assert not isinstance(exact, Rejection)
    assert loose.occurred_at == exact.occurred_at


def test_year_range_applies_after_rounding_to_microseconds() -> None:
    late, early = "2100-12-31T23:59:59.9999995Z", "1999-12-31T23:59:59.9999995Z"
    assert schema_accepts(_event_at(late))
    assert not decoder_accepts(_event_at(late))
    assert not schema_accepts(_event_at(early))
    assert decoder_accepts(_event_at(early))
    assert rfc3339_reading(late) == "2101-01-01T00:00:00Z"
    assert rfc3339_reading(early) == "2000-01-01T00:00:00Z"


# ============================================================================================
# (d) Property: decode_event accepts exactly what the schemas accept
# ============================================================================================

_id_chars = st.characters(
    exclude_categories=["Cs"],
    exclude_characters=[chr(c) for c in range(0x21)]
    + ["\x7f", "\x85", "\xa0", "\u1680", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
    + [chr(c) for c in range(0x2000, 0x200B)],
)
valid_ids = st.text(_id_chars, min_size=1, max_size=128)
valid_tokens = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=64)
valid_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
valid_amounts = st.one_of(st.floats(0, 1e9), st.integers(0, 10**9))
valid_timestamps = st.builds(
    lambda d, spec: d.isoformat(timespec=spec),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 12, 31), timezones=_offsets),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)
valid_items = st.lists(
    st.fixed_dictionaries(
        {"product_id": valid_ids},
        optional={
            "category": st.none() | valid_tokens,
            "price": st.none() | valid_amounts,
            "quantity": st.integers(1, 10_000),
            "note": json_values,
        },
    ),
    max_size=4,
)
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": valid_ids,
    "customer_id": valid_ids,
    "occurred_at": valid_timestamps,
    "session_id": st.none() | valid_ids,
    "channel": st.none() | st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z"),
    "device": st.none() | valid_tokens,
    "timezone": st.none() | st.from_regex(r"\A[A-Za-z0-9_+/\-]{1,64}\Z"),
    "page": st.none() | valid_texts,
    "page_type": st.none() | valid_tokens,
    "product_id": st.none() | valid_ids,
    "category": st.none() | valid_tokens,
    "price": st.none() | valid_amounts,
    "currency": st.none() | st.from_regex(r"\A[A-Z]{3}\Z"),
    "referrer": st.none() | valid_texts,
    "error_code": st.none() | valid_tokens,
    "step": st.none() | valid_tokens,
    "query": st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60),
    "results_count": st.none() | st.integers(0, 2**63 - 1),
    "filters": st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    "sort": st.none() | valid_tokens,
    "order_id": valid_ids,
    "items": valid_items,
    "total": st.none() | valid_amounts,
    "status": st.sampled_from(["granted", "revoked"]),
    "purpose": valid_tokens,
    "action": st.sampled_from(["add", "remove"]),
    "reason": st.none() | valid_tokens,
    "request_id": st.none() | valid_tokens,
}
KIND_FIELDS = {
    "clickstream": (
        "page",
        "page_type",
        "product_id",
        "category",
        "price",
        "currency",
        "referrer",
        "error_code",
        "step",
    ),
    "search": ("query", "results_count", "filters", "sort"),
    "purchase": ("order_id", "items", "total", "currency"),
    "consent": ("status", "purpose"),
    "suppression": ("action", "reason"),
    "privacy": ("request_id",),
}
COMMON_FIELDS = ("event_id", "customer_id", "occurred_at", "session_id", "channel", "device", "timezone")
KIND_TYPES = {
    "clickstream": sorted(CLICKSTREAM_TYPES),
    "search": sorted(SEARCH_TYPES),
    "purchase": sorted(PURCHASE_TYPES),
    "consent": ["consent"],
    "suppression": ["suppression"],
    "privacy": sorted(PRIVACY_TYPES),
}
REQUIRED_FIELDS = (
    "event_id",
    "customer_id",
    "occurred_at",
    "query",
    "order_id",
    "status",
    "purpose",
    "action",
)


def _without_none(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        (t,) = [u for u in t.types if not isinstance(u, mi.NoneType)]
    return t


def edges(t: mi.Type) -> st.SearchStrategy[Any]:
    """Values on both sides of each limit the code sets on ``t`` (compared with the schema's limits)."""
    t = _without_none(t)
    if isinstance(t, mi.StrType):
        low, high = t.min_length or 0, t.max_length if t.max_length is not None else 8
        return st.builds(
            lambda c, n: c * n,
            st.sampled_from(["a", "A", "1", "\u00e9", "\U0001f600"]),
            st.sampled_from(sorted({max(low - 1, 0), low, high, high + 1})),
        )
    if isinstance(t, mi.FloatType | mi.IntType):
        assert t.ge is not None
        bounds = [t.ge - 1, t.ge] + ([t.le, t.le + 1] if t.le is not None else [2**63 - 1])
        nudged = [t.ge - 0.01, t.le + 0.5] if t.le is not None else [t.ge - 0.01]
        return st.sampled_from([*bounds, *[float(b) for b in bounds], *nudged, -0.0, True])
    if isinstance(t, mi.ListType):
        assert t.max_length is not None
        return st.sampled_from([t.max_length, t.max_length + 1]).map(lambda n: [{"product_id": "p"}] * n)
    if isinstance(t, mi.DictType):
        assert t.max_length is not None
        return st.sampled_from([t.max_length, t.max_length + 1]).map(lambda n: {f"k{i}": i for i in range(n)})
    if isinstance(t, mi.DateTimeType):
        return timestamps
    if isinstance(t, mi.LiteralType):
        values = [str(v) for v in t.values]
        near = [v.upper() for v in values] + [v + " " for v in values] + ["", "yes"]
        return st.sampled_from([*values, *near])
    raise AssertionError(t)


# The characters on which the patterns' verdicts turn.
_ODD = " \t\n\r\x00\x1f\x7f\x80\x85\xa0\u2000\u200b\u3000\ufeffaA1_-/+.:"


def with_one_odd_char(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid string with one character that matters put at its start, middle or end."""
    return st.builds(
        lambda v, c, where: (
            v
            if not isinstance(v, str)
            else {"start": c + v, "middle": v[: len(v) // 2] + c + v[len(v) // 2 :], "end": v + c}[where]
        ),
        valid,
        st.sampled_from(_ODD),
        st.sampled_from(["start", "middle", "end"]),
    )


FIELD_TYPES = {
    f.name: f.type
    for s in (ClickstreamEvent, SearchEvent, PurchaseEvent, ConsentEvent, SuppressionEvent, ForgetRequest)
    for f in mi.type_info(s).fields
}
ITEM_TYPES = {f.name: f.type for f in mi.type_info(Item).fields}
VALID_ITEM_FIELDS = {
    "product_id": valid_ids,
    "category": st.none() | valid_tokens,
    "price": st.none() | valid_amounts,
    "quantity": st.integers(1, 10_000),
}


def mixed(valid: st.SearchStrategy[Any], t: mi.Type) -> st.SearchStrategy[Any]:
    """Valid values, values at the limits, near misses and values of any JSON type."""
    newline = valid.map(lambda v: v + "\n" if isinstance(v, str) else v)
    return st.one_of(valid, edges(t), with_one_odd_char(valid), newline, json_values)


@st.composite
def odd_items(draw: st.DrawFn) -> list[Any]:
    """Valid order lines, one of which has a field replaced or removed."""
    items: list[Any] = draw(st.lists(st.fixed_dictionaries(VALID_ITEM_FIELDS), min_size=1, max_size=3))
    i = draw(st.integers(0, len(items) - 1))
    name = draw(st.sampled_from(sorted(ITEM_TYPES)))
    if draw(st.integers(0, 4)) == 0:
        del items[i][name]
    else:
        items[i][name] = draw(mixed(VALID_ITEM_FIELDS[name], ITEM_TYPES[name]))
    if draw(st.integers(0, 9)) == 0:
        items[i] = draw(json_values)
    return items


MIXED_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    name: mixed(VALID_FIELDS[name], FIELD_TYPES[name]) for name in VALID_FIELDS
}
MIXED_FIELDS["items"] = st.one_of(MIXED_FIELDS["items"], odd_items())
edge_years = st.builds(
    lambda v, year: f"{year}{v[4:]}", valid_timestamps, st.sampled_from(["1999", "2000", "2100", "2101"])
)
MIXED_FIELDS["occurred_at"] = st.one_of(valid_timestamps, edge_years, timestamps)
MIXED_FIELDS["event_type"] = st.one_of(
    st.sampled_from(sorted(EVENT_TYPES)),
    st.sampled_from(["", "PAGE_VIEW", "search ", "click", "search\n", "refund\x00"]),
    json_scalars,
)


@st.composite
def event_like(draw: st.DrawFn) -> Any:
    """A valid event of some kind, with a few fields then replaced, removed or added."""
    if draw(st.integers(0, 30)) == 0:
        return draw(json_values)  # not even an object
    kind = draw(st.sampled_from(sorted(KIND_FIELDS)))
    obj: dict[str, Any] = {"event_type": draw(st.sampled_from(KIND_TYPES[kind]))}
    for name in COMMON_FIELDS + KIND_FIELDS[kind]:
        required = name in REQUIRED_FIELDS
        if required or draw(st.booleans()):
            obj[name] = draw(VALID_FIELDS[name])
    own = sorted({*COMMON_FIELDS, "event_type", *KIND_FIELDS[kind]})
    other = sorted({f for fs in KIND_FIELDS.values() for f in fs} - set(own))  # ignored extras to this kind
    mutated = draw(st.lists(st.sampled_from(own), min_size=1, max_size=2, unique=True))
    mutated += draw(st.lists(st.sampled_from(other), max_size=1))
    for name in mutated:
        if draw(st.integers(0, 4)) == 0:
            obj.pop(name, None)
        else:
            obj[name] = draw(MIXED_FIELDS[name])
    if draw(st.booleans()):
        obj[draw(st.text(min_size=1, max_size=6))] = draw(json_values)  # unknown extras are ignored
    return obj


@settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(obj=event_like())
def test_decoder_accepts_exactly_what_the_schema_accepts(obj: Any) -> None:
    raw = orjson.dumps(obj)
    decoded = decode_event(raw)
    instance = orjson.loads(raw)  # the JSON the decoder saw
    if len(raw) > MAX_EVENT_BYTES:  # exception 1
        assert isinstance(decoded, Rejection)
        assert decoded.reason is Reason.TOO_LARGE
        return
    expected = expected_decoder_verdict(instance)
    detail = decoded.detail if isinstance(decoded, Rejection) else "accepted"
    assert (not isinstance(decoded, Rejection)) == expected, (detail, instance)


# ============================================================================================
# (e) Triggers written by the real replay validate against the trigger schema
# ============================================================================================


def _ev(event_id: str, customer: str, event_type: str, at: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "customer_id": customer,
        "event_type": event_type,
        "occurred_at": f"2026-11-25T{at}Z",
        **fields,
    }


# Fires every moment, with and without each optional key; in event-time order.
TRIGGER_EVENTS = [
    _ev(
        "e-p1",
        "cust-price",
        "product_view",
        "10:00:00",
        product_id="p1",
        category="headphones",
        price=99.0,
        session_id="s-1",
        channel="web",
    ),
    _ev(
        "e-p2",
        "cust-price",
        "product_view",
        "10:01:00",
        product_id="p2",
        category="headphones",
        price=129.0,
        session_id="s-1",
        channel="web",
    ),
    _ev(
        "e-p3",
        "cust-price",
        "product_view",
        "10:02:00",
        product_id="p3",
        category="headphones",
        price=79.0,
        session_id="s-1",
        channel="web",
    ),
    _ev("e-cmp", "cust-compare", "compare_view", "10:03:00"),
    _ev("e-r1", "cust-review", "review_view", "10:04:00", product_id="p9", channel="app"),
    _ev("e-r2", "cust-rsearch", "search", "10:05:00", query="best running shoes reviews"),
    _ev("e-c1", "cust-cart", "add_to_cart", "10:06:00", product_id="p3", price=79.0, session_id="s-9"),
    _ev("e-c2", "cust-cart", "checkout_step", "10:07:00", step="shipping", session_id="s-9"),
    _ev(
        "e-b1",
        "cust-buyer",
        "purchase",
        "10:08:00",
        order_id="o-1",
        items=[{"product_id": "p5", "quantity": 2}],
        total=50.0,
        currency="EUR",
    ),
    _ev("e-b3", "cust-buyer2", "purchase", "10:09:00", order_id="o-2", items=[]),
    _ev("e-l1", "cust-local", "store_locator_view", "10:10:00", channel="app"),
    _ev("e-f1", "cust-frust", "error", "10:11:00", error_code="timeout"),
    _ev("e-f2", "cust-frust", "error", "10:11:10", error_code="timeout"),
    _ev("e-f3", "cust-frust", "error", "10:11:20", error_code="timeout"),
    _ev("e-d1", "cust-declined", "error", "10:12:00", error_code="card_declined"),
    _ev("e-b2", "cust-buyer", "help_view", "12:00:00", product_id="p5"),
    _ev("e-b4", "cust-buyer2", "search", "13:00:00", query="how to set up my blender"),
    _ev("e-c3", "cust-cart2", "add_to_cart", "13:01:00", product_id="p7"),
    _ev("e-k1", "cust-checkout", "checkout_step", "13:02:00", step="payment"),  # a cart without products
]


def _replay(
    events: list[dict[str, Any]],
    tmp: Path,
    catalogue: Catalogue | None = None,
    held_out: io.BytesIO | None = None,
) -> list[dict[str, Any]]:
    """The triggers of a replay of ``events``; detection only unless ``catalogue`` says otherwise."""
    path = tmp / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    out = io.BytesIO()
    problems: list[Any] = []
    summary = asyncio.run(
        replay(
            [path],
            catalogue or load_catalogue(DETECTION_ONLY),
            out=out,
            on_problem=problems.append,
            show_progress=False,
            held_out=held_out,
        )
    )
    assert not problems
    assert summary.applied == len(events)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def triggers(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _replay(TRIGGER_EVENTS, tmp_path_factory.mktemp("replay"))


def test_the_trigger_events_are_valid_input() -> None:
    for event in TRIGGER_EVENTS:
        assert schema_accepts(event), event


def test_replay_fires_every_moment_and_every_optional_key(triggers: list[dict[str, Any]]) -> None:
    moments = set(DOCS[TRIGGER_SCHEMA_FILE]["$defs"]["data"]["properties"]["moment"]["enum"])
    assert {t["data"]["moment"] for t in triggers} == moments
    keys = {key for t in triggers for key in t["data"]}
    optional = set(DOCS[TRIGGER_SCHEMA_FILE]["$defs"]["data"]["properties"]) - set(
        DOCS[TRIGGER_SCHEMA_FILE]["$defs"]["data"]["required"]
    )
    assert optional <= keys
    price = [t["data"] for t in triggers if t["data"]["moment"] == "price_comparison"]
    assert {"category" in d for d in price} == {True, False}
    review = [t["data"] for t in triggers if t["data"]["moment"] == "review_seeking"]
    assert {"products" in d for d in review} == {True, False}
    assert {d["session_id"] is None for t in triggers for d in [t["data"]]} == {True, False}
    carts = [t["data"] for t in triggers if t["data"]["moment"] == "cart_abandonment"]
    assert {not d["products"] for d in carts} == {True, False}  # checkout without products: an empty list


def test_replayed_triggers_validate(triggers: list[dict[str, Any]]) -> None:
    for trigger in triggers:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in TRIGGER_VALIDATOR.iter_errors(trigger)]
        assert not errors, trigger


def test_demo_fixture_validates_end_to_end(tmp_path: Path) -> None:
    """The shipped demo day, when present: every event valid input, every trigger valid output."""
    fixture = ROOT / "fixtures" / "demo" / "day.jsonl"
    if not fixture.is_file():
        pytest.skip("no demo fixture")
    events = [orjson.loads(line) for line in fixture.read_bytes().splitlines() if line.strip()]
    assert {e["event_type"] for e in events} & CONSENT_TYPES  # the policy's input is in the contract too
    for event in events:
        assert schema_accepts(event), event
    for trigger in _replay(events, tmp_path):
        assert TRIGGER_VALIDATOR.is_valid(trigger), trigger
    # With the shipped policy: the triggers and the holdout records are the same contract.
    held_out = io.BytesIO()
    published = _replay(events, tmp_path, load_catalogue(), held_out)
    recorded = [orjson.loads(line) for line in held_out.getvalue().splitlines()]
    assert published
    assert recorded
    for trigger in published + recorded:
        assert TRIGGER_VALIDATOR.is_valid(trigger), trigger


def _detection(**changes: Any) -> Detection:
    fields: dict[str, Any] = {
        "moment": "frustration",
        "customer_id": "c1",
        "ts": 1_764_064_800_000,
        "anchor": "e1",
        "score": 0.6,
        "threshold": 0.5,
        "decided_by": Decider.RULES,
        "reasons": ["repeated_errors"],
        "evidence": ["e1"],
        "explanation": "Frustrated: hit 3 errors.",
        "journey_stage": Stage.AWARENESS,
        "window": {
            "events": 1,
            "product_views": 0,
            "searches": 0,
            "distinct_products": 0,
            "distinct_categories": 0,
            "span_seconds": 0,
        },
        "expires_at": 1_764_065_700_000,
        "attributes": {},
        "session_id": None,
        "channel": None,
    }
    return Detection(**(fields | changes))


def test_trigger_schema_matches_to_cloudevent() -> None:
    schema = DOCS[TRIGGER_SCHEMA_FILE]
    event = to_cloudevent(_detection(), source="urn:micromoments:detector")
    assert set(schema["required"]) == set(event)
    assert set(schema["$defs"]["data"]["required"]) == set(event["data"])  # written for every moment
    assert schema["properties"]["specversion"]["const"] == SPEC_VERSION
    assert schema["properties"]["datacontenttype"]["const"] == DATA_CONTENT_TYPE
    assert CONTENT_TYPE == "application/cloudevents+json"
    assert TRIGGER_VALIDATOR.is_valid(event)


def test_trigger_enums_match_the_code() -> None:
    data = DOCS[TRIGGER_SCHEMA_FILE]["$defs"]["data"]["properties"]
    detector = Detector(load_catalogue(DETECTION_ONLY))
    assert set(data["moment"]["enum"]) == set(detector.moments)
    assert set(data["journey_stage"]["enum"]) == {s.value for s in Stage}
    assert {d.value for d in Decider} <= set(data["decided_by"]["enum"]) == {"rules", "model"}
    type_pattern = re.compile(DOCS[TRIGGER_SCHEMA_FILE]["properties"]["type"]["pattern"])
    assert all(type_pattern.search(trigger_type(m)) for m in detector.moments)
    signals = {s for m in detector.moments.values() for s in m.signals}
    assert set(re.findall(r"`([a-z_]+)`", data["reasons"]["description"])) == signals


def test_moment_specific_keys_are_in_the_schema() -> None:
    data = DOCS[TRIGGER_SCHEMA_FILE]["$defs"]["data"]["properties"]
    assert {"category", "products", "order_ids", "cart_value"} <= set(data)
    rules = {
        r["if"]["properties"]["data"]["properties"]["moment"]["const"]: r["then"]
        for r in DOCS[TRIGGER_SCHEMA_FILE]["allOf"]
    }
    assert set(rules) == set(data["moment"]["enum"])
    for moment, then in rules.items():
        assert then["properties"]["type"]["const"] == trigger_type(moment)


def _mutated(trigger: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(trigger))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()
BROKEN = {
    "specversion 0.3": ("specversion", "0.3"),
    "no id": ("id", _DELETE),
    "id not a UUID": ("id", "trigger-1"),
    "type of another moment": ("type", "micromoment.local_intent.v1"),
    "type v2": ("type", "micromoment.cart_abandonment.v2"),
    "no subject": ("subject", _DELETE),
    "time without ms": ("time", "2026-11-25T10:33:00Z"),
    "datacontenttype text": ("datacontenttype", "text/plain"),
    "unknown moment": ("data.moment", "impulse_buy"),
    "score above 1": ("data.score", 1.5),
    "negative threshold": ("data.threshold", -0.1),
    "decided_by human": ("data.decided_by", "human"),
    "no reasons": ("data.reasons", []),
    "evidence of 11": ("data.evidence", [f"e{i}" for i in range(11)]),
    "unknown journey stage": ("data.journey_stage", "checkout"),
    "window count missing": ("data.window.searches", _DELETE),
    "negative window count": ("data.window.events", -1),
    "no expires_at": ("data.expires_at", _DELETE),
    "expires_at local time": ("data.expires_at", "2026-11-26T10:33:00.000+01:00"),
    "session_id a number": ("data.session_id", 7),
    "no channel key": ("data.channel", _DELETE),
    "cart without cart_value": ("data.cart_value", _DELETE),
    "cart without products": ("data.products", _DELETE),
    "negative cart_value": ("data.cart_value", -1),
}


@pytest.mark.parametrize(("path", "value"), list(BROKEN.values()), ids=list(BROKEN))
def test_broken_triggers_are_rejected(triggers: list[dict[str, Any]], path: str, value: Any) -> None:
    (cart,) = [
        t for t in triggers if t["data"]["moment"] == "cart_abandonment" and t["subject"] == "cust-cart"
    ]
    assert TRIGGER_VALIDATOR.is_valid(cart)
    assert not TRIGGER_VALIDATOR.is_valid(_mutated(cart, path, value))


def test_moment_specific_required_keys(triggers: list[dict[str, Any]]) -> None:
    by_moment = {t["data"]["moment"]: t for t in triggers if t["data"].get("products") != []}
    assert not TRIGGER_VALIDATOR.is_valid(
        _mutated(by_moment["post_purchase_howto"], "data.order_ids", _DELETE)
    )
    (browsing,) = [t for t in triggers if "category_browsing" in t["data"]["reasons"]]
    assert not TRIGGER_VALIDATOR.is_valid(_mutated(browsing, "data.category", _DELETE))
    (compare,) = [t for t in triggers if t["subject"] == "cust-compare"]
    assert "category" not in compare["data"]
    assert TRIGGER_VALIDATOR.is_valid(compare)


def test_trigger_ids_are_deterministic(tmp_path: Path, triggers: list[dict[str, Any]]) -> None:
    again = _replay(TRIGGER_EVENTS, tmp_path)
    assert [t["id"] for t in again] == [t["id"] for t in triggers]
    assert len({t["id"] for t in triggers}) == len(triggers)


def test_triggers_with_hashed_customer_ids_validate(tmp_path: Path, triggers: list[dict[str, Any]]) -> None:
    policy = {"hash_customer_ids": True, "customer_id_salt": "s3cret"}
    hashed = _replay(TRIGGER_EVENTS, tmp_path, load_catalogue(DETECTION_ONLY, overrides={"policy": policy}))
    assert len(hashed) == len(triggers)
    for trigger in hashed:
        assert re.fullmatch(r"[0-9a-f]{64}", trigger["subject"]), trigger["subject"]
        assert trigger["data"]["customer_id"] == trigger["subject"]
        assert TRIGGER_VALIDATOR.is_valid(trigger), trigger
    customers = {e["customer_id"] for e in TRIGGER_EVENTS}
    assert {t["subject"] for t in hashed} <= {sha256_hex("s3cret" + c) for c in customers}


def _forget_request(**fields: Any) -> ForgetRequest:
    request = decode_event(orjson.dumps({**_E, "event_type": "forget", **fields}))
    assert isinstance(request, ForgetRequest)
    return request


def test_confirmation_schema_matches_the_code() -> None:
    schema = DOCS[CONFIRMATION_SCHEMA_FILE]
    assert schema["properties"]["type"]["const"] == CONFIRMATION_TYPE
    assert schema["properties"]["specversion"]["const"] == SPEC_VERSION
    assert schema["properties"]["datacontenttype"]["const"] == DATA_CONTENT_TYPE
    erased = schema["$defs"]["data"]["properties"]["erased"]["description"]
    assert re.findall(r"`([a-z_]+)`", erased) == list(ERASED)
    for request in (_forget_request(), _forget_request(request_id="DSR 42 \u00e9")):
        for subject in (request.customer_id, sha256_hex("salt" + request.customer_id)):
            event = confirmation(request, source="urn:micromoments:detector", subject=subject)
            assert set(schema["required"]) == set(event)
            assert set(schema["$defs"]["data"]["required"]) == set(event["data"])
            errors = [e.message for e in CONFIRMATION_VALIDATOR.iter_errors(event)]
            assert not errors, event


def test_confirmations_of_the_pipelines_erasures_validate() -> None:
    """A forget request through the real pipeline, confirmed as the worker does, hashed ids on."""
    catalogue = load_catalogue(DETECTION_ONLY, overrides={"policy": {"hash_customer_ids": True}})
    detector = Detector(catalogue)
    policy = Policy(catalogue.policy)
    writer = TriggerWriter(catalogue.trigger.source, policy.subject)
    events = [
        decode_event(orjson.dumps(VALID["consent granted"])),
        decode_event(orjson.dumps({**VALID["forget with request_id"], "event_id": "e-2"})),
    ]

    async def forgotten() -> list[ForgetRequest]:
        pipeline = Pipeline(detector, policy, MemoryStateStore())
        batch = await pipeline.run({"s": [e for e in events if not isinstance(e, Rejection)]})
        await pipeline.commit(batch)
        return batch.forgotten

    (request,) = asyncio.run(forgotten())
    event = confirmation(request, source=writer.source, subject=writer.subject(request.customer_id))
    assert event["subject"] == sha256_hex(request.customer_id)
    assert event["data"]["request_id"] == "DSR-2026-0042"
    assert CONFIRMATION_VALIDATOR.is_valid(event), event


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("type", "micromoments.privacy.forgotten.v2"),
        ("id", "not-a-uuid"),
        ("time", "2026-11-25T10:00:00Z"),
        ("subject", "has space"),
        ("data.erased", []),
        ("data.request_id", 42),
        ("data.request_event_id", _DELETE),
        ("data", _DELETE),
    ],
)
def test_broken_confirmations_are_rejected(path: str, value: Any) -> None:
    event = confirmation(_forget_request(), source="urn:micromoments:detector", subject="cust-1")
    assert CONFIRMATION_VALIDATOR.is_valid(event)
    assert not CONFIRMATION_VALIDATOR.is_valid(_mutated(event, path, value))


def test_trigger_times_are_utc_milliseconds(triggers: list[dict[str, Any]]) -> None:
    for trigger in triggers:
        data = trigger["data"]
        assert trigger["time"] == data["detected_at"]
        assert trigger["subject"] == data["customer_id"]
        detected = datetime.fromisoformat(data["detected_at"])
        assert detected.tzinfo == UTC
        assert datetime.fromisoformat(data["expires_at"]) > detected


# ============================================================================================
# The README states what the code does
# ============================================================================================

README = (SCHEMAS / "README.md").read_text(encoding="utf-8") if (SCHEMAS / "README.md").is_file() else ""


def test_readme_example_trigger_validates() -> None:
    (block,) = re.findall(r"```json\n(.*?)```", README, re.DOTALL)
    example_ = json.loads(block)
    assert TRIGGER_VALIDATOR.is_valid(example_)


def test_readme_names_the_real_topics_reasons_and_moments() -> None:
    settings = load_settings({})
    topics = [settings.topic_clickstream, settings.topic_search, settings.topic_purchase]
    topics += [settings.topic_consent, settings.topic_privacy, settings.topic_triggers]
    topics += [settings.topic_holdout, settings.topic_confirmations, settings.topic_dlq]
    for name in [*topics, *(r.value for r in Reason), *Detector(load_catalogue()).moments, CONTENT_TYPE]:
        assert f"`{name}`" in README, name


def test_readme_time_to_live_defaults() -> None:
    words = {"minutes": 60_000, "hour": 3_600_000, "hours": 3_600_000, "days": 86_400_000}
    stated = {
        moment: int(n) * words[unit]
        for moment, n, unit in re.findall(r"`([a-z_]+)` (\d+) (minutes|hours?|days)", README)
    }
    moments = load_catalogue().moments
    assert stated == {name: getattr(moments, name).ttl for name in Detector(load_catalogue()).moments}
