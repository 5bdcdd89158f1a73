"""A prediction body is bounded before it is parsed: each fault is a 4xx naming it."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.requests import ClientDisconnect

from mlplane.serving.body import (
    JSON_MAX_DEPTH,
    BodyTooLarge,
    UnsupportedMediaType,
    parse_json,
    read_body,
)
from mlplane.serving.validation import RequestError

LIMIT = 1024


class Body:
    """A body arriving in chunks, as Starlette's `Request.stream()` yields it; counts reads."""

    def __init__(self, *chunks: bytes, disconnect: bool = False) -> None:
        self.chunks = chunks
        self.disconnect = disconnect
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += len(chunk)
            yield chunk
        if self.disconnect:
            raise ClientDisconnect


def read(body: Body, **headers: str) -> bytes:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return asyncio.run(read_body(named, body, LIMIT))


def test_a_body_within_the_limit_is_read_whole() -> None:
    body = Body(b'{"instances": ', b"[]}")
    assert read(body, content_type="application/json; charset=utf-8") == b'{"instances": []}'
    assert read(Body(b"{}"), content_type="application/vnd.api+json") == b"{}"
    assert read(Body(b"x" * LIMIT)) == b"x" * LIMIT  # no Content-Type: taken as JSON


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = Body(b"x" * 10 * LIMIT)
    with pytest.raises(BodyTooLarge, match=f"body of {10 * LIMIT} bytes exceeds the limit of"):
        read(body, content_length=str(10 * LIMIT))
    assert body.read == 0
    assert BodyTooLarge.status == 413


def test_a_body_without_a_length_or_longer_than_declared_stops_at_the_limit() -> None:
    chunked = Body(*[b"x" * 256] * 1000)
    with pytest.raises(BodyTooLarge, match=f"body exceeds the limit of {LIMIT} bytes"):
        read(chunked)
    assert chunked.read <= LIMIT + 256
    lying = Body(*[b"x" * 256] * 1000)
    with pytest.raises(BodyTooLarge):
        read(lying, content_length="10")
    assert lying.read <= LIMIT + 256


@pytest.mark.parametrize(
    "content_type", ["text/csv", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_non_json_media_type_is_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"Content-Type '{content_type}' is not sup"):
        read(Body(b"{}"), content_type=content_type)
    assert UnsupportedMediaType.status == 415


def test_a_malformed_length_and_a_client_gone_midway_are_client_errors() -> None:
    with pytest.raises(RequestError, match="Content-Length 'ten' is not a number"):
        read(Body(b"{}"), content_length="ten")
    with pytest.raises(RequestError, match="client disconnected before the body ended"):
        read(Body(b'{"inst', disconnect=True))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 5000 + b"]" * 5000, "nest deeper than 201 levels"),
        (b'{"instances": [{"x": NaN}]}', "NaN and Infinity are not JSON"),
        (b'{"instances": [{"x": -Infinity}]}', "NaN and Infinity are not JSON"),
        (b'{"instances": [{"x": ' + b"9" * 5000 + b"}]}", "number out of range"),
        (b'{"instances": [{"x": "\xff\xfe"}]}', "invalid unicode code point"),
        (b'{"instances": [{"x": "\\ud800"}]}', "hex escape"),
        (b'{"instances": []} {"instances": []}', "trailing characters"),
        (b'{"instances": [', "EOF while parsing"),
        (b"  \n", "body is empty"),
    ],
)
def test_json_the_parser_refuses_is_a_400_saying_why(body: bytes, message: str) -> None:
    with pytest.raises(RequestError, match="body") as refused:
        parse_json(body)
    assert message in str(refused.value)
    assert refused.value.status == 400


def test_valid_json_parses_as_pythons_json_would() -> None:
    assert parse_json(b'{"instances": [{"a": 1, "b": 2.5, "c": null, "d": "\\u00e9"}]}') == {
        "instances": [{"a": 1, "b": 2.5, "c": None, "d": "é"}]
    }


def test_nesting_is_refused_just_past_the_documented_depth() -> None:
    depth = JSON_MAX_DEPTH
    innermost = parse_json(b"[" * depth + b"]" * depth)
    for _ in range(depth - 1):
        (innermost,) = innermost
    assert innermost == []
    with pytest.raises(RequestError, match=f"nest deeper than {depth} levels"):
        parse_json(b"[" * (depth + 1) + b"]" * (depth + 1))
