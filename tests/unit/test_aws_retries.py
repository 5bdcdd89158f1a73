"""Throttling and transient AWS errors are retried with backoff inside one call.

A small HTTP server on loopback answers as SageMaker does when it throttles, then serves the
call; the operator's own boto3 clients (`boto3_clients`) talk to it over HTTP. The Stubber cannot
show this: it answers before botocore's retry handler runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from botocore.exceptions import ClientError

from mlplane.operator.backends.aws import AwsCredentials, boto3_clients, classify

ENDPOINT = {
    "EndpointName": "churn-sm",
    "EndpointArn": "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/churn-sm",
    "EndpointConfigName": "churn-sm-1",
    "EndpointStatus": "InService",
    "CreationTime": 0,
    "LastModifiedTime": 0,
}


class FlakySageMaker(BaseHTTPRequestHandler):
    """Throttles the first `failures` requests (400 ThrottlingException), then 500s the next
    `server_errors`, then answers DescribeEndpoint."""

    failures = 0
    server_errors = 0
    arrivals: ClassVar[list[float]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.arrivals.append(time.monotonic())
        seen = len(cls.arrivals)
        if seen <= cls.failures:
            self._answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
        elif seen <= cls.failures + cls.server_errors:
            self._answer(500, {"__type": "InternalFailure", "message": "try again"})
        else:
            self._answer(200, ENDPOINT)

    def _answer(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def sagemaker() -> Iterator[tuple[type[FlakySageMaker], str]]:
    handler = type("Handler", (FlakySageMaker,), {"arrivals": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_throttling_and_server_errors_are_retried_with_backoff(
    sagemaker: tuple[type[FlakySageMaker], str],
) -> None:
    handler, url = sagemaker
    handler.failures, handler.server_errors = 2, 1
    aws = boto3_clients("eu-west-1", url, AwsCredentials("test", "test"))
    described = aws.sagemaker.describe_endpoint(EndpointName="churn-sm")
    assert described["EndpointStatus"] == "InService"
    assert len(handler.arrivals) == 4
    waits = [
        later - earlier
        for earlier, later in zip(handler.arrivals, handler.arrivals[1:], strict=False)
    ]
    assert sum(waits) > 0.05, waits  # jittered exponential backoff, not an immediate loop


def test_throttling_that_outlasts_the_retries_is_not_terminal(
    sagemaker: tuple[type[FlakySageMaker], str],
) -> None:
    handler, url = sagemaker
    handler.failures = 100
    aws = boto3_clients("eu-west-1", url, AwsCredentials("test", "test"))
    with pytest.raises(ClientError) as raised:
        aws.sagemaker.describe_endpoint(EndpointName="churn-sm")
    assert len(handler.arrivals) == 6  # the call and botocore's 5 retries (max_attempts)
    reason, message, terminal = classify(raised.value)
    assert (reason, terminal) == ("ThrottlingException", False)
    assert message == "DescribeEndpoint: Rate exceeded"
