"""One model behind three servers, under the same closed-loop load: throughput and latency.

    .venv/bin/python bench/serving_throughput.py [--concurrency 1 4 16 64] [--seconds 15]
        [--servers mlplane fastapi mlflow]

The model is the one the README's demo trains (`mlplane run examples/trainingjob-xgboost.yaml`,
registered as churn-model@candidate on a local MLflow server started here). It is served by:

- `mlplane`: examples/modeldeployment-ray.yaml through the ModelDeployment reconciler on a local
  Ray head (Ray Serve, batching, 1 to 2 replicas), as the operator deploys it;
- `fastapi`: bench/fastapi_service.py under `uvicorn` (one process), as users write it by hand;
- `mlflow`: `mlflow models serve --env-manager local`.

The load is N clients (asyncio + aiohttp, in this process), each sending one single-row request
after the other for `--seconds` after a warm-up; every server gets the same rows in the same order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import mlflow
import numpy as np
import requests
import yaml

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator import embedded
from mlplane.operator.config import OperatorConfig
from mlplane.operator.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODEL = "models:/churn-model@candidate"
WARMUP_SECONDS = 3.0


@dataclass(frozen=True)
class Target:
    """A running server: where to POST and how to wrap a batch of rows."""

    name: str
    url: str
    body: Callable[[list[dict[str, Any]]], dict[str, Any]]


@dataclass
class Measurement:
    target: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    def row(self) -> str:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if self.latencies_ms else (0, 0)
        return (
            f"| {self.target} | {self.concurrency} | {self.requests / self.seconds:.0f} "
            f"| {p50:.1f} | {p99:.1f} | {self.errors} |"
        )


async def closed_loop(
    target: Target, rows: list[dict[str, Any]], concurrency: int, seconds: float
) -> Measurement:
    """`concurrency` clients, each waiting for its answer before sending the next request."""
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    measuring = False

    async def client(session: aiohttp.ClientSession, offset: int, until: float) -> None:
        index = offset
        while (started := time.perf_counter()) < until:
            body = target.body([rows[index % len(rows)]])
            index += concurrency
            try:
                async with session.post(target.url, json=body) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if measuring:
                counts["requests"] += 1
                counts["errors"] += not ok
                latencies.append((time.perf_counter() - started) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm_until = time.perf_counter() + WARMUP_SECONDS
        await asyncio.gather(*(client(session, i, warm_until) for i in range(concurrency)))
        measuring = True
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(client(session, i, until) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    requests_made, errors = counts["requests"], counts["errors"]
    return Measurement(target.name, concurrency, requests_made, errors, elapsed, latencies)


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer (exit status {process.poll()})")


@contextmanager
def server(argv: list[str], env: dict[str, str], health_url: str) -> Iterator[None]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                wait_until_up(health_url, process)
            except TimeoutError as error:
                log.seek(0)
                raise RuntimeError(f"{argv[0]}:\n{log.read()[-3000:].decode()}") from error
            yield
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def fastapi_target(env: dict[str, str], version_uri: str) -> Iterator[Target]:
    port = embedded.free_port()
    argv = [
        str(BIN / "uvicorn"), "--app-dir", str(ROOT / "bench"), "fastapi_service:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server(argv, {**env, "MODEL_URI": version_uri}, f"{url}/healthz"):
        yield Target("fastapi + uvicorn", f"{url}/", lambda rows: {"instances": rows})


@contextmanager
def mlflow_target(env: dict[str, str], version_uri: str) -> Iterator[Target]:
    port = embedded.free_port()
    argv = [
        str(BIN / "mlflow"), "models", "serve", "-m", version_uri, "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server(argv, env, f"{url}/ping"):
        yield Target(
            "mlflow models serve", f"{url}/invocations", lambda rows: {"dataframe_records": rows}
        )


@contextmanager
def mlplane_target(ray: str, mlflow_uri: str, data_dir: Path) -> Iterator[Target]:
    """examples/modeldeployment-ray.yaml, reconciled until Available, as the operator does."""
    config = OperatorConfig(
        ray_address=ray,
        mlflow_tracking_uri=mlflow_uri,
        data_dir=data_dir,
        serve_http_port=embedded.free_port(),
    )
    reconciler = Runtime.start(config).serving
    document = yaml.safe_load((ROOT / "examples" / "modeldeployment-ray.yaml").read_text())
    document["metadata"].update(namespace="bench", generation=1)
    deployment = ModelDeployment.model_validate(document)
    deadline = time.monotonic() + 300
    while deployment.status is None or deployment.status.phase != "Available":
        if time.monotonic() > deadline:
            raise TimeoutError(f"not Available: {deployment.status}")
        deployment.status = reconciler.reconcile(deployment).status
        time.sleep(1)
    assert deployment.status.url
    try:
        yield Target("mlplane (Ray Serve)", deployment.status.url, lambda rows: {"instances": rows})
    finally:
        reconciler.delete(deployment)


def register_model(ray: str, mlflow_uri: str, data_dir: Path) -> None:
    """The README's demo TrainingJob, which registers churn-model@candidate."""
    env = {
        **os.environ,
        "MLPLANE_RAY_ADDRESS": ray,
        "MLPLANE_MLFLOW_TRACKING_URI": mlflow_uri,
        "MLPLANE_DATA_DIR": str(data_dir),
    }
    argv = [str(BIN / "mlplane"), "run", str(ROOT / "examples" / "trainingjob-xgboost.yaml")]
    subprocess.run(argv, env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--servers", nargs="+", choices=["mlplane", "fastapi", "mlflow"],
        default=["mlplane", "fastapi", "mlflow"],
    )  # fmt: skip
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlplane-bench-") as scratch:
        directory = Path(scratch)
        ray = embedded.start_local_ray(directory / "ray", num_cpus=4)
        mlflow_uri = embedded.start_local_mlflow(directory / "mlflow")
        register_model(ray, mlflow_uri, directory / "mlplane")
        mlflow.set_tracking_uri(mlflow_uri)
        version = mlflow.MlflowClient().get_model_version_by_alias("churn-model", "candidate")
        version_uri = f"models:/churn-model/{version.version}"
        frame = mlflow.models.Model.load(version_uri).load_input_example()
        rows = json.loads(frame.to_json(orient="records"))
        # `mlflow models serve` starts `uvicorn` from PATH.
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": path}

        targets = {
            "mlplane": lambda: mlplane_target(ray, mlflow_uri, directory / "mlplane"),
            "fastapi": lambda: fastapi_target(env, version_uri),
            "mlflow": lambda: mlflow_target(env, version_uri),
        }
        results: list[Measurement] = []
        for name in args.servers:
            with targets[name]() as target:
                for concurrency in args.concurrency:
                    measured = asyncio.run(closed_loop(target, rows, concurrency, args.seconds))
                    print(measured.row(), flush=True)
                    results.append(measured)
        embedded.stop_all()

    print("| server | clients | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for concurrency in args.concurrency:
        for measured in results:
            if measured.concurrency == concurrency:
                print(measured.row())


if __name__ == "__main__":
    main()
