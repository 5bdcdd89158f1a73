"""The few MLflow REST calls the operator makes, without MLflow's Python client.

The operator only reads runs and pins registry versions; training code (which does import MLflow)
writes. MLflow's client package would cost the operator about 130 MiB of memory and 5 s of
start-up for those few calls, so they go to the tracking server's
documented REST API (`/api/2.0/mlflow/...`) over one pooled session, with the same environment
variables for credentials MLflow's client reads.
"""

from __future__ import annotations

import os
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mlplane.operator.config import RECONCILE_THREADS

TIMEOUT_SECONDS = 30.0


class MlflowError(RuntimeError):
    """An error answer of the tracking server, with MLflow's error code."""

    def __init__(self, error_code: str, message: str, status: int) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message
        self.status = status


def _session() -> requests.Session:
    session = requests.Session()
    # Transient failures of the server or a proxy in front of it; MLflow's client retries too.
    retry = Retry(
        total=5,
        backoff_factor=0.5,
        status_forcelist=(429, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=RECONCILE_THREADS)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        session.headers["Authorization"] = f"Bearer {token}"
    elif user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        session.auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    return session


class MlflowRest:
    """One tracking server, by its HTTP(S) URI."""

    def __init__(self, tracking_uri: str) -> None:
        if not tracking_uri.startswith(("http://", "https://")):
            raise ValueError(
                f"mlflow_tracking_uri must be an MLflow tracking server (http:// or https://), "
                f"which training on Ray can reach too; got {tracking_uri!r}"
            )
        self.base = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/"
        self.session = _session()

    def call(self, method: str, endpoint: str, **payload: Any) -> dict[str, Any]:
        url = self.base + endpoint
        if method == "GET":
            response = self.session.get(url, params=payload, timeout=TIMEOUT_SECONDS)
        else:
            response = self.session.post(url, json=payload, timeout=TIMEOUT_SECONDS)
        if response.ok:
            return response.json() if response.content else {}
        try:
            body = response.json()
        except ValueError:
            body = {}
        raise MlflowError(
            body.get("error_code", f"HTTP_{response.status_code}"),
            body.get("message", response.text[:300]),
            response.status_code,
        )

    def experiment_id(self, name: str) -> str | None:
        """The experiment's id, or None if there is none of that name."""
        try:
            found = self.call("GET", "experiments/get-by-name", experiment_name=name)
        except MlflowError as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return str(found["experiment"]["experiment_id"])

    def search_runs(
        self,
        experiment_ids: list[str],
        filter_string: str,
        max_results: int,
        order_by: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `max_results` runs (as MLflow's REST API returns them), page by page."""
        runs: list[dict[str, Any]] = []
        token: str | None = None
        while len(runs) < max_results:
            payload: dict[str, Any] = {
                "experiment_ids": experiment_ids,
                "filter": filter_string,
                "max_results": min(max_results - len(runs), 1000),
                "order_by": order_by or [],
            }
            if token:
                payload["page_token"] = token
            page = self.call("POST", "runs/search", **payload)
            runs.extend(page.get("runs", []))
            token = page.get("next_page_token")
            if not token:
                break
        return runs

    def model_version(self, name: str, version: str | None = None, alias: str | None = None) -> str:
        """The registry version `version` or `alias` of model `name` names."""
        if alias is not None:
            found = self.call("GET", "registered-models/alias", name=name, alias=alias)
        else:
            found = self.call("GET", "model-versions/get", name=name, version=version)
        return str(found["model_version"]["version"])
