"""The operator's Kubernetes client gives up on an API server that never answers."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from kubernetes import client

from mlplane.operator.kube_client import BoundedApiClient


def test_a_hung_api_server_times_out_instead_of_holding_the_thread(hung_server: str) -> None:
    api = client.CoreV1Api(BoundedApiClient(client.Configuration(host=hung_server), (1.0, 1.0)))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.MaxRetryError, match="Read timed out"):
        api.read_namespace("team-a")
    assert time.monotonic() - started < 2.5  # one wait, not one per urllib3 retry


def test_a_read_the_api_server_asks_to_retry_is_asked_again() -> None:
    """The API server answers 429 with Retry-After under flow control and while a new kind's
    storage starts; kubectl waits and asks again, and so does mlplane."""
    answers = [(429, {"Retry-After": "1"}, b"{}"), (200, {}, b'{"items": []}')]
    asked: list[float] = []

    class Server(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(time.monotonic())
            status, headers, body = answers[min(len(asked), len(answers)) - 1]
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        api = client.CoreV1Api(BoundedApiClient(client.Configuration(host=host)))
        assert api.list_namespace().items == []
    finally:
        server.shutdown()
    assert len(asked) == 2
    assert asked[1] - asked[0] >= 1.0  # after the wait the server named
