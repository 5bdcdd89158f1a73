"""Poison requests against a ModelDeployment on real Ray Serve, with models from real MLflow.

The deployment runs a canary at 100% of traffic, so every request below lands on the canary and
counts in its figures. A corpus of hostile bodies must each get the 4xx that names its fault; the
replica that answered them must be the same process afterwards, its memory barely moved; a valid
request must still be answered; and the canary's guard, judged on the real figures, must not roll
back a canary whose only failures were the clients' own.
"""

import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import requests
from ray.util.state import list_actors
from serving_support import FEATURES, ROWS, Story, register_iris, serving_story

from mlplane.crds.modeldeployment import DEFAULT_MAX_REQUEST_BYTES, ModelDeployment
from mlplane.serving.config import SERVER_DEPLOYMENT, app_name

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]

NAMESPACE, NAME = "serving-test", "poison"
MIB = 1024 * 1024
ROW = ROWS[0]


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return f'{{"instances": {open_ * depth}1{close * depth}}}'.encode()


@dataclass(frozen=True)
class Poison:
    """One hostile request: its body (or the raw bytes sent on the socket) and its answer."""

    name: str
    body: bytes = b""
    content_type: str | None = "application/json"
    status: int = 400
    error: str = ""
    """Words the answer's `error` must contain."""
    raw: bytes | None = None
    """Sent as-is on a socket after the request line and Host (a lying Content-Length)."""
    chunked: bool = False
    """Sent without a Content-Length, in chunks."""
    reaches_the_replica: bool = True
    """False when Serve's HTTP server refuses it before the application sees it."""


CORPUS = [
    Poison("arrays 5000 deep", nested(5000), error="nest deeper than 201 levels"),
    Poison("objects 5000 deep", nested(5000, '{"a":', "}"), error="recursion limit exceeded"),
    Poison(
        "10 MB declared",
        b'{"instances": ["' + b"x" * (10 * 1000 * 1000) + b'"]}',
        status=413,
        error=f"exceeds the limit of {DEFAULT_MAX_REQUEST_BYTES} bytes",
    ),
    Poison(
        "5 MiB chunked, no length",
        b'{"instances": ["' + b"x" * (5 * MIB) + b'"]}',
        status=413,
        error="body exceeds the limit",
        chunked=True,
    ),
    Poison(
        "body longer than its Content-Length",
        raw=b"Content-Type: application/json\r\nContent-Length: 14\r\n\r\n"
        + b'{"instances": [{"sl": 1}]}' * 1000,
        # Serve's HTTP server reads the bytes past the length as a second request and refuses
        # the connection before the replica's answer to the first is sent.
        error="Invalid HTTP request",
        reaches_the_replica=False,
    ),
    Poison(
        "Content-Length of 1 GB",
        raw=b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{}",
        status=413,
        error="body of 1000000000 bytes exceeds the limit",
    ),
    Poison(
        "integer of 5000 digits",
        b'{"instances": [{"sl": ' + b"9" * 5000 + b"}]}",
        error="number out of range",
    ),
    Poison(
        "integer of 400 digits",
        b'{"instances": [{"sl": ' + b"9" * 400 + b', "sw": 1, "pl": 1, "pw": 1}]}',
        error="'sl' is out of range for a double",
    ),
    Poison(
        "1e400",
        b'{"instances": [{"sl": 1e400, "sw": 1, "pl": 1, "pw": 1}]}',
        error="'sl' is out of range for a double: float inf",
    ),
    Poison("NaN", b'{"instances": [{"sl": NaN}]}', error="NaN and Infinity are not JSON"),
    Poison("-Infinity", b'{"instances": [{"sl": -Infinity}]}', error="not JSON"),
    Poison("invalid UTF-8", b'{"instances": [{"sl": "\xc3\x28"}]}', error="invalid unicode"),
    Poison("lone surrogate", b'{"instances": [{"sl": "\\udc00"}]}', error="hex escape"),
    Poison("UTF-16", '{"instances": []}'.encode("utf-16"), error="not JSON"),
    Poison("text/csv", b"sl,sw,pl,pw\n1,2,3,4\n", "text/csv", 415, "text/csv"),
    Poison("form", b"instances=1", "application/x-www-form-urlencoded", 415, "application/json"),
    Poison("multipart", b"--x\r\n\r\n{}\r\n--x--", "multipart/form-data; boundary=x", 415),
    Poison("empty body", b"", error="body is empty"),
    Poison("JSON null", b"null", error="must be a JSON object"),
    Poison("top-level array", b'[{"sl": 1}]', error="must be a JSON object"),
    Poison("trailing data", b'{"instances": []} {}', error="trailing characters"),
    Poison("no rows key", b'{"rows": []}', error="exactly one of instances"),
    Poison("rows as arrays", b'{"instances": [[1, 2, 3, 4]]}', error="list of objects"),
    Poison(
        "33 rows over maxBatchSize",
        f'{{"instances": [{", ".join(["{}"] * 33)}]}}'.encode(),
        error="exceeds maxBatchSize 32",
    ),
    Poison(
        "unknown column",
        b'{"instances": [{"sl": 1, "sw": 1, "pl": 1, "pw": 1, "petal": 2}]}',
        error="unknown feature(s) 'petal'",
    ),
    Poison(
        "200000 unknown columns",
        b'{"instances": [{"sl": 1, "sw": 1, "pl": 1, "pw": 1, '
        + ", ".join(f'"c{i}": 0' for i in range(200_000)).encode()
        + b"}]}",
        error="unknown feature(s) 'c0', 'c1', 'c10', 'c100'",
    ),
    Poison(
        "string for a number",
        b'{"instances": [{"sl": "5.1", "sw": 1, "pl": 1, "pw": 1}]}',
        error="'sl' must be a number",
    ),
    Poison(
        "3 MiB string for a number",
        b'{"instances": [{"sl": "' + b"7" * (3 * MIB) + b'", "sw": 1, "pl": 1, "pw": 1}]}',
        error="'sl' must be a number",
    ),
    Poison(
        "object for a number",
        b'{"instances": [{"sl": {"$gt": 1}, "sw": 1, "pl": 1, "pw": 1}]}',
        error="'sl' must be a number",
    ),
    Poison(
        "split with a short row",
        b'{"dataframe_split": {"columns": ["sl", "sw", "pl", "pw"], "data": [[1, 2]]}}',
        error="dataframe_split.data[0] must be a list of 4 values",
    ),
]


def send_raw(url: str, tail: bytes) -> tuple[int, bytes]:
    """POST with hand-written headers and body on a socket: the status and the first response's
    bytes (a server may answer the bytes past Content-Length as a second request)."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as connection:
        connection.sendall(f"POST {parsed.path}/ HTTP/1.1\r\nHost: {parsed.netloc}\r\n".encode())
        connection.sendall(tail)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def send(url: str, poison: Poison) -> tuple[int, str]:
    if poison.raw is not None:
        status, answer = send_raw(url, poison.raw)
        return status, answer.decode(errors="replace")
    headers = {"Content-Type": poison.content_type} if poison.content_type else {}
    size = 256 * 1024
    body = (
        (poison.body[i : i + size] for i in range(0, len(poison.body), size))
        if poison.chunked
        else poison.body
    )
    response = requests.post(url, data=body, headers=headers, timeout=60)
    return response.status_code, response.json()["error"]


@dataclass(frozen=True)
class Replica:
    """The ModelServer replica process, as Ray's state API and the kernel see it."""

    actor_id: str
    pid: int
    rss_bytes: int


def replica(ray_cluster: str) -> Replica:
    class_name = f"ServeReplica:{app_name(NAMESPACE, NAME)}:{SERVER_DEPLOYMENT}"
    actors = list_actors(
        address=ray_cluster, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")]
    )
    assert len(actors) == 1, actors
    pid = actors[0].pid
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return Replica(actors[0].actor_id, pid, rss_kib * 1024)


def canary_live(md: ModelDeployment) -> bool:
    canary = md.status.canary
    return md.status.phase == "Progressing" and bool(canary) and canary.step_started is not None


@pytest.fixture(scope="module")
def story(ray_cluster: str, mlflow_server: str) -> Iterator[Story]:
    """Stable v1 and a canary v2 at 100% of traffic, held there for the whole module."""
    mlflow.set_tracking_uri(mlflow_server)
    with mlflow.start_run():
        stable, candidate = (register_iris("iris-poison", t, c) for t, c in (("v1", 1), ("v2", 2)))
    spec = {
        "model": {"uri": stable},
        "ray": {"perReplica": {"cpu": "200m"}},
        "canary": {
            "model": {"uri": candidate},
            "steps": [100],
            "intervalSeconds": 3600,
            "guard": {"maxErrorRate": 0.01, "maxLatencyP99Ms": 5000},
        },
    }
    with serving_story(ray_cluster, mlflow_server, NAMESPACE, NAME, spec) as story:
        story.drive(canary_live, timeout=240)
        yield story


def send_corpus(url: str) -> dict[int, int]:
    """Every poison once; how many got each status. Fails naming any answered otherwise."""
    answers = {poison.name: send(url, poison) for poison in CORPUS}
    wrong = {
        poison.name: answers[poison.name]
        for poison in CORPUS
        if answers[poison.name][0] != poison.status or poison.error not in answers[poison.name][1]
    }
    assert not wrong, wrong
    return dict(sorted(Counter(status for status, _ in answers.values()).items()))


def test_poison_bodies_get_4xx_and_leave_the_replica_and_the_canary_alone(
    story: Story, ray_cluster: str
) -> None:
    valid = {"instances": ROWS}
    assert requests.post(story.url, json=valid, timeout=30).status_code == 200
    before = replica(ray_cluster)
    statuses = send_corpus(story.url)
    once = replica(ray_cluster)
    assert send_corpus(story.url) == statuses
    twice = replica(ray_cluster)
    first_mib, second_mib = (
        (b.rss_bytes - a.rss_bytes) / MIB for a, b in ((before, once), (once, twice))
    )
    print(
        f"\n{len(CORPUS)} poison bodies, sent twice: {statuses} each time; replica RSS "
        f"{before.rss_bytes / MIB:.1f} MiB, {first_mib:+.1f} MiB after the first pass, "
        f"{second_mib:+.1f} MiB after the second; same replica: {twice.pid == before.pid}"
    )
    assert (twice.actor_id, twice.pid) == (before.actor_id, before.pid)  # never restarted
    assert first_mib < 50
    assert second_mib < first_mib / 2  # what the first pass took is mostly reused, not leaked

    for _ in range(5):
        answer = requests.post(story.url, json=valid, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"]["role"] == "canary"
    split = {"dataframe_split": {"columns": FEATURES, "data": [list(ROW.values())]}}
    assert requests.post(story.url, json=split, timeout=30).status_code == 200

    time.sleep(1.5)  # replicas push their counts each second
    figures = requests.get(f"{story.url}/-/metrics", params={"window": 600}, timeout=10).json()
    canary = figures["roles"]["canary"]
    rejected = 2 * sum(poison.reaches_the_replica for poison in CORPUS)
    assert canary["rejected"] == rejected and canary["errors"] == 0, canary
    assert canary["errorRate"] == 0.0 and canary["requests"] == rejected + 7
    # 7 served requests, over the 5 the guard needs: it is judged, and it holds.
    md = story.step()
    assert md.status.canary.outcome == "InProgress" and md.status.phase == "Progressing"
    assert not [event for event in story.events if event[0] == "Warning"], story.events


def test_a_non_finite_metrics_window_is_a_client_error(story: Story) -> None:
    answer = requests.get(f"{story.url}/-/metrics", params={"window": "nan"}, timeout=10)
    assert answer.status_code == 422
