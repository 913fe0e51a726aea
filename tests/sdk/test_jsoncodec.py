"""rho_agent.jsoncodec: the stdlib's document, faster, and the stdlib's behaviour at the edges."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rho_agent import jsoncodec

STDLIB = {"ensure_ascii": False, "separators": (",", ":")}
RECORDS: list[Any] = [
    {"v": 1, "type": "message", "ts": "2026-12-07T07:00:00+00:00", "role": "user", "content": "é"},
    {"kind": "event", "attempt": 1, "seq": 7, "event": {"type": "tool_end", "tool_result": "ok"}},
    {"usage": {"input_tokens": 1400, "cost": 0.0012, "nothing": None, "flags": [True, False]}},
    ["a list", 1, 2.5, {"nested": {"deep": []}}],
    "line\nbreak \u2028 and \x00 control",
]


@pytest.mark.parametrize("value", RECORDS)
def test_the_document_is_the_stdlibs_compact_utf8_one(value: Any) -> None:
    expected = json.dumps(value, **STDLIB)  # type: ignore[arg-type]
    assert jsoncodec.dumps(value) == expected
    assert jsoncodec.dumpb(value) == expected.encode()
    assert jsoncodec.loads(expected) == value
    assert jsoncodec.loads(expected.encode()) == value


def test_what_orjson_refuses_still_encodes_as_before() -> None:
    value = {"big": 2**70, 3: "int key"}
    assert jsoncodec.dumps(value) == json.dumps(value, **STDLIB)  # type: ignore[arg-type]


def test_what_orjson_cannot_parse_is_read_as_the_stdlib_reads_it() -> None:
    assert jsoncodec.loads('{"x": NaN, "big": 1180591620717411303424}')["big"] == 2**70


def test_a_bad_document_raises_the_stdlibs_error() -> None:
    with pytest.raises(json.JSONDecodeError, match="Expecting"):
        jsoncodec.loads('{"torn": ')
