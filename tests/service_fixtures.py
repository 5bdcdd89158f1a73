"""Session fixtures for the real services tests run against: a Ray head, MLflow, S3 on moto;
and a server that never answers, as a wedged one does.

Loaded as a pytest plugin (`-p service_fixtures`). Each service starts once per session, on free
localhost ports, and only when a test asks for it. Ray and MLflow come from
`mlplane.operator.embedded`, the same code as the operator's embedded default.

When a service cannot start: in CI (`CI=true`) the test errors, because a skipped integration test
there would hide a broken environment; on a workstation it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from mlplane.operator import embedded

# Logical CPUs and object store of the test Ray head: enough for a 2-worker Train run plus its
# driver and controller on a 2-core machine, without claiming all of its memory.
RAY_TEST_CPUS = 4
RAY_TEST_OBJECT_STORE_MB = 400


SERVICES = frozenset(
    {"ray_cluster", "mlflow_server", "moto_server", "hung_server", "helm", "kubeconfig"}
)
"""The fixtures that start a server or build a tool: a test using any of them, directly or
through another fixture, is marked `services`, and `make unit` runs the rest."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


def unavailable(reason: str, error: BaseException) -> NoReturn:
    """A part the tests need is missing: a failure under CI (a broken run there), else a skip
    that says why, so a laptop without the cached cluster can still run the unit tests."""
    message = f"{reason}: {type(error).__name__}: {error}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    else:
        pytest.skip(message)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard address (Jobs API) of a local Ray head, e.g. http://127.0.0.1:8265."""
    try:
        address = embedded.start_local_ray(
            tmp_path_factory.mktemp("ray"),
            num_cpus=RAY_TEST_CPUS,
            object_store_mb=RAY_TEST_OBJECT_STORE_MB,
        )
    except Exception as error:
        unavailable("Ray could not start", error)
    yield address
    embedded.stop(address)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tracking URI of an MLflow server (SQLite store, served artifacts)."""
    try:
        uri = embedded.start_local_mlflow(tmp_path_factory.mktemp("mlflow"))
    except Exception as error:
        unavailable("MLflow could not start", error)
    yield uri
    embedded.stop(uri)


@dataclass(frozen=True)
class MotoServer:
    """An S3 endpoint and the environment that points boto3 (and the runner) at it."""

    endpoint_url: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 on a free localhost port, with fake credentials.

    `env` is for the process under test (a Ray job's runtime_env, a subprocess); this process's
    own environment is left alone so other tests never talk to moto by accident.
    """
    from moto.server import ThreadedMotoServer

    port = embedded.free_port()
    server = ThreadedMotoServer(ip_address=embedded.LOCALHOST, port=port, verbose=False)
    try:
        server.start()
    except Exception as error:
        unavailable("moto could not start", error)
    endpoint = f"http://{embedded.LOCALHOST}:{port}"
    yield MotoServer(
        endpoint_url=endpoint,
        env={
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    server.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository checkout (examples/ and the custom code live here)."""
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def hung_server() -> Iterator[str]:
    """A server that accepts connections and never answers, as a wedged Ray dashboard or API
    server does."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()
