"""A prediction request's body, bounded before anything parses it.

Any client can reach a replica, so a body is a hostile input: it is refused with a 4xx naming the
fault, never with a 5xx (5xx are the model's failures and count against a canary), and it is
never read or parsed past its limit.

- Size: a declared Content-Length over the limit is refused before a byte is read (413); a body
  without one (chunked) or longer than it claims is counted while it streams and refused as soon
  as it crosses the limit.
- Media type: a declared non-JSON Content-Type is refused (415); none at all is taken as JSON.
- JSON: parsed by pydantic-core's Rust parser (jiter), which refuses what Python's `json` would
  let through or crash on: nesting deeper than its recursion limit (Python's `json` raises
  RecursionError, a 500), NaN and Infinity literals, integers over 4300 digits, invalid UTF-8,
  lone surrogates and trailing data. It is also several times faster on the request path.
  Numbers that parse but fit no column (`1e400` becomes infinity) are refused by
  `mlplane.serving.validation`, which knows each column's type.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any

import pydantic_core
from starlette.requests import ClientDisconnect

from mlplane.serving.validation import RequestError

JSON_MAX_DEPTH = 201
"""The deepest nesting of arrays and objects the parser takes: pydantic-core's own recursion limit
(not a setting; a unit test pins it, so an upgrade that moves it is noticed)."""


class BodyTooLarge(RequestError):
    """The body is longer than the application's limit."""

    status = 413


class UnsupportedMediaType(RequestError):
    """The body declares a format other than JSON."""

    status = 415


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def check_headers(headers: Mapping[str, str], limit: int) -> None:
    """Refuse from the headers alone what the body could not fix: a non-JSON media type, or a
    declared length over `limit`."""
    content_type = headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; send application/json"
        )
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise RequestError(f"Content-Length {declared!r} is not a number") from None
    if length > limit:
        raise BodyTooLarge(f"body of {length} bytes exceeds the limit of {limit} bytes")


async def read_body(headers: Mapping[str, str], chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The whole body, or a RequestError as soon as the headers or the bytes so far break a rule.

    `chunks` is the body as it arrives (Starlette's `Request.stream()`); it is not started when
    the headers already refuse the request.
    """
    check_headers(headers, limit)
    received: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
            received.append(chunk)
    except ClientDisconnect:
        raise RequestError("the client disconnected before the body ended") from None
    return b"".join(received)


def parse_json(body: bytes) -> Any:
    """The body as Python values, or a RequestError saying where and why it is not JSON."""
    if not body.strip():
        raise RequestError('body is empty; send a JSON object such as {"instances": [...]}')
    try:
        return pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        hint = ""
        if str(error).startswith("recursion limit exceeded"):
            hint = f" (arrays and objects nest deeper than {JSON_MAX_DEPTH} levels)"
        at_a_literal = str(error).startswith(("expected value", "invalid number"))
        if at_a_literal and (b"NaN" in body or b"Infinity" in body):
            hint = " (NaN and Infinity are not JSON; send null for a missing value)"
        raise RequestError(f"body is not JSON: {error}{hint}") from None
