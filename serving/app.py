"""The Ray Serve application a ModelDeployment becomes (`import_path: mlplane.serving.app:build`).

Each `ModelServer` replica loads the stable model (and, during a canary, the canary model) from
MLflow, warms it with one prediction, and only then returns from its constructor: Serve routes no
traffic to a replica before that, so readiness means "loaded and warmed". A canary model that
fails to load or warm is reported, not fatal: the replica serves the stable model alone and the
operator rolls the canary back.

Per request: pick stable or canary by the canary percentage, read the body within its limit and
parse it (`mlplane.serving.body`), validate it against that model's signature (4xx naming the
feature; the replica is never at risk), queue the rows for the model's own `@serve.batch` queue
(batches are counted in rows), and record the outcome and latency. A 4xx is the client's fault
and is counted apart from the model's failures (5xx), which alone count against a canary.

HTTP, below the application's route prefix:
- `POST /` (also `/predict`, `/invocations`): `{"instances": [{feature: value}, ...]}` →
  `{"predictions": [...], "model": {"uri", "version", "role"}}`; errors are `{"error": "..."}`:
  400 for a body that is not valid JSON or does not fit the model, 413 over `maxBodyBytes`, 415
  for a non-JSON Content-Type, 500 when the model fails.
- `GET /healthz`: 200 with the models this replica serves.
- `GET /-/ready`: 200 once loaded and warmed (a replica answers nothing before).
- `GET /-/metrics?window=60`: the whole application's counts, rates and latency percentiles per
  role over the trailing window (see `mlplane.serving.metrics.summarize`).
"""

import asyncio
import logging
import math
import random
import time
from typing import Annotated, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from mlflow.exceptions import MlflowException
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from mlplane.crds.modeldeployment import DEFAULT_MAX_REQUEST_BYTES
from mlplane.serving.body import parse_json, read_body
from mlplane.serving.config import ModelRef
from mlplane.serving.metrics import Outcome, Recorder, Window
from mlplane.serving.validation import (
    Feature,
    RequestError,
    features_from_schema,
    parse_rows,
    to_frame,
)

log = logging.getLogger("mlplane.serving")

PUSH_INTERVAL_SECONDS = 1.0
# MLflow's codes for input its schema enforcement refused: the client's fault, not the model's.
_MLFLOW_INPUT_ERRORS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}
_WARMUP_VALUES: dict[str, Any] = {
    "double": 0.0,
    "float": 0.0,
    "long": 0,
    "integer": 0,
    "boolean": False,
    "string": "",
    "binary": "",
    "datetime": "1970-01-01T00:00:00",
}


# Helpers come before the deployments: `@serve.ingress` snapshots the module's names when the
# class is decorated, so anything defined below it would be missing inside the replica.


def _rows(frames: list[pd.DataFrame]) -> int:
    return sum(len(frame) for frame in frames)


def _jsonable(output: Any) -> list[Any]:
    """Predictions as JSON-ready rows: arrays, Series and DataFrames alike; NaN becomes null."""
    if isinstance(output, pd.DataFrame):
        rows: list[Any] = output.to_dict(orient="records")
    elif isinstance(output, pd.Series | np.ndarray):
        rows = output.tolist()
    elif isinstance(output, dict):
        columns = {k: np.asarray(v).tolist() for k, v in output.items()}
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
    else:
        rows = list(output)
    return [_clean(row) for row in rows]


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class ModelNotReady(RuntimeError):
    """The model could not be loaded or failed its warm-up prediction."""


class LoadedModel:
    """One MLflow model inside a replica, with a batch queue of its own."""

    def __init__(self, ref: ModelRef, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.ref = ref
        try:
            self.model = mlflow.pyfunc.load_model(ref.uri)
        except Exception as error:
            raise ModelNotReady(f"cannot load {ref.uri}: {_describe(error)}") from error
        self.features: list[Feature] | None = features_from_schema(
            self.model.metadata.get_input_schema()
        )
        # Made per instance: serve.batch keeps one queue per decorated function, and the stable
        # and canary models must never share a batch.
        self.predict = serve.batch(
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            batch_size_fn=_rows,
        )(self._predict_frames)
        self._warm_up()

    def _warm_up(self) -> None:
        example = self.model.input_example
        if example is None and self.features:
            example = to_frame(
                [{f.name: _WARMUP_VALUES[f.type] for f in self.features}], self.features
            )
        if example is None:
            log.warning("%s has neither input example nor signature: not warmed", self.ref.uri)
            return
        try:
            self.model.predict(example)
        except Exception as error:
            raise ModelNotReady(
                f"warm-up prediction of {self.ref.uri} failed: {_describe(error)}"
            ) from error

    async def _predict_frames(self, frames: list[pd.DataFrame]) -> list[list[Any] | Exception]:
        """One batch; if the joined batch fails, each request is retried alone so that one
        request the model cannot handle never fails the others."""
        try:
            joined = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
            rows = _jsonable(await asyncio.to_thread(self.model.predict, joined))
        except Exception as error:
            if len(frames) == 1:
                return [error]
            return [(await self._predict_frames([frame]))[0] for frame in frames]
        results: list[list[Any] | Exception] = []
        start = 0
        for frame in frames:
            results.append(rows[start : start + len(frame)])
            start += len(frame)
        return results

    def describe(self, error: str | None = None) -> dict[str, Any]:
        return {"uri": self.ref.uri, "version": self.ref.version, "ready": True, "error": error}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class MetricsCollector:
    """Merges every ModelServer replica's counts; answers `/-/metrics` for the application."""

    def __init__(self) -> None:
        self.window = Window()

    def push(
        self, replica: str, drained: dict[str, dict[int, dict[str, Any]]], models: dict[str, Any]
    ) -> None:
        self.window.merge(drained)
        self.window.report_models(replica, models)

    def summary(self, window_seconds: float) -> dict[str, Any]:
        return self.window.summary(window_seconds)


class PrefixIsRoot:
    """ASGI middleware: the route prefix itself (`/ns/name`) means `/`.

    FastAPI would answer it with a 307 to `/ns/name/`, doubling every request's round trips for
    clients that use `status.url` as it is.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == scope.get("root_path", "").rstrip("/"):
            scope = {**scope, "path": scope["path"] + "/"}
        await self.app(scope, receive, send)


api = FastAPI(title="mlplane model server")
api.add_middleware(PrefixIsRoot)


@serve.deployment
@serve.ingress(api)
class ModelServer:
    """The HTTP ingress: validates, routes stable/canary, batches, and counts every request."""

    def __init__(
        self,
        stable: dict[str, Any],
        canary: dict[str, Any] | None,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_body_bytes: int,
        collector: DeploymentHandle,
    ) -> None:
        self.max_rows = max_batch_size
        self.max_body_bytes = max_body_bytes
        self.collector = collector
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.models = {
            "stable": LoadedModel(ModelRef.from_dict(stable), max_batch_size, batch_wait_timeout_s)
        }
        self.canary_failure: dict[str, Any] | None = None
        if canary:
            try:
                self.models["canary"] = LoadedModel(
                    ModelRef.from_dict(canary), max_batch_size, batch_wait_timeout_s
                )
            except ModelNotReady as error:
                log.error("canary not served: %s", error)
                self.canary_failure = {**canary, "ready": False, "error": str(error)}
        self.canary_percent = 0
        self.recorder = Recorder()
        self._pusher: asyncio.Task[None] | None = None

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """`user_config` changed: a canary step, applied in place without a restart."""
        self.canary_percent = int(config.get("canaryPercent", 0))
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever())

    def _models(self) -> dict[str, Any]:
        described = {role: model.describe() for role, model in self.models.items()}
        if self.canary_failure:
            described["canary"] = self.canary_failure
        return described

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(PUSH_INTERVAL_SECONDS)
            drained = self.recorder.drain()
            try:
                await self.collector.push.remote(self.replica, drained, self._models())
            except Exception as error:  # the collector restarts; a second of counts is lost
                log.warning("metrics push failed: %s", _describe(error))

    def _route(self) -> str:
        if "canary" in self.models and random.random() * 100 < self.canary_percent:
            return "canary"
        return "stable"

    @api.post("/")
    @api.post("/predict")
    @api.post("/invocations")
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        role = self._route()
        model = self.models[role]
        outcome: Outcome = "ok"
        try:
            body = await read_body(request.headers, request.stream(), self.max_body_bytes)
            frame = to_frame(parse_rows(parse_json(body), self.max_rows), model.features)
            result = await model.predict(frame)
            if isinstance(result, Exception):
                raise result
            response = JSONResponse(
                {"predictions": result, "model": {**model.describe(), "role": role}}
            )
        except RequestError as error:
            outcome = "rejected"
            response = JSONResponse({"error": str(error)}, status_code=error.status)
        except MlflowException as error:
            client_fault = error.error_code in _MLFLOW_INPUT_ERRORS
            outcome = "rejected" if client_fault else "error"
            response = JSONResponse(
                {"error": f"{'invalid input' if client_fault else 'prediction failed'}: {error}"},
                status_code=400 if client_fault else 500,
            )
        except Exception as error:
            outcome = "error"
            log.warning("prediction failed on the %s model: %s", role, _describe(error))
            response = JSONResponse(
                {"error": f"prediction failed: {_describe(error)}"}, status_code=500
            )
        self.recorder.record(role, outcome, (time.perf_counter() - started) * 1000)
        return response

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "models": self._models()}

    @api.get("/-/ready")
    def ready(self) -> dict[str, Any]:
        # A replica answers only after its constructor loaded and warmed every model.
        return {"ready": True, "replica": self.replica, "models": self._models()}

    @api.get("/-/metrics")
    async def metrics(
        self, window: Annotated[float, Query(allow_inf_nan=False)] = 60.0
    ) -> dict[str, Any]:
        return await self.collector.summary.remote(max(window, 1.0))


def build(args: dict[str, Any]) -> Application:
    """The application for Serve's declarative config; `args` come from `serve_application`."""
    # Serve's decorators made both classes Deployments; mypy cannot see through them.
    server: Any = ModelServer
    collector: Any = MetricsCollector
    return server.bind(
        stable=args["stable"],
        canary=args.get("canary"),
        max_batch_size=int(args.get("maxBatchSize", 32)),
        batch_wait_timeout_s=float(args.get("batchWaitTimeoutS", 0.005)),
        max_body_bytes=int(args.get("maxBodyBytes", DEFAULT_MAX_REQUEST_BYTES)),
        collector=collector.bind(),
    )
