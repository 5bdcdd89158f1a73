"""The `ray` serving backend: Ray Serve's declarative REST API on the Ray dashboard.

Serve's config is declarative and cluster-wide: a PUT to `/api/serve/applications/` replaces every
application at once. So each change reads what is deployed, swaps in or drops the one application
it is about, and PUTs the whole set back; applications mlplane does not manage are carried over
untouched. A PUT happens only when the application's config differs from what Serve already has,
so repeating a reconcile is free and never restarts a replica.

Only HTTP is used (no Ray imports): the operator launches Serve, it never links against it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

import requests

from mlplane.serving.config import SERVER_DEPLOYMENT

APPLICATIONS_PATH = "/api/serve/applications/"
# Replica states that take requests: UPDATING is an in-place reconfigure (a canary step).
_SERVING = ("RUNNING", "UPDATING", "PENDING_MIGRATION")


class ServeError(RuntimeError):
    """Serve refused a config or could not be reached; the message is Serve's own."""


@dataclass(frozen=True)
class AppState:
    """One Serve application as the controller reports it."""

    status: str
    """MISSING (no such application), NOT_STARTED, DEPLOYING, RUNNING, DEPLOY_FAILED, UNHEALTHY
    or DELETING."""
    message: str = ""
    config: dict[str, Any] | None = None
    """The application config Serve is deploying or running (its target)."""
    ready_replicas: int = 0
    """ModelServer replicas taking requests."""
    desired_replicas: int = 0
    """ModelServer replicas the autoscaler wants now."""
    deployment_messages: dict[str, str] = field(default_factory=dict)


class ServingBackend(Protocol):
    """What the ModelDeployment reconciler needs from wherever Serve runs."""

    name: str

    def apply(self, application: dict[str, Any]) -> bool:
        """Make `application` Serve's config for its name; True if that needed a change."""
        ...

    def state(self, name: str) -> AppState: ...

    def metrics(self, route_prefix: str, window_seconds: float) -> dict[str, Any] | None:
        """The application's `/-/metrics` over the trailing window; None if unreachable."""
        ...

    def remove(self, name: str) -> None:
        """Drop the application; removing a missing one is a no-op."""
        ...

    def url(self, route_prefix: str) -> str: ...


def same_config(deployed: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    """Whether Serve already has `wanted` (compared as JSON: Serve returns ints as floats)."""
    if deployed is None:
        return False
    return _normal(deployed) == _normal(wanted)


METRICS_PATH = "/-/metrics"
"""The application's figures (mlplane.serving.app), below its route prefix."""


def metrics_query(window_seconds: float) -> dict[str, str]:
    """The query asking `METRICS_PATH` for the trailing window (whole seconds, at least one)."""
    return {"window": f"{max(window_seconds, 1.0):.0f}"}


def read_metrics(
    session: requests.Session, app_url: str, window_seconds: float, timeout: float
) -> dict[str, Any] | None:
    """The application's figures over the trailing window; None if it cannot be reached."""
    try:
        response = session.get(
            app_url + METRICS_PATH, params=metrics_query(window_seconds), timeout=timeout
        )
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


class ServeRestBackend:
    """Serve on one Ray cluster, driven through its dashboard's REST API."""

    name = "ray"

    def __init__(
        self,
        dashboard_address: str,
        http_host: str = "127.0.0.1",
        http_port: int = 8000,
        proxy_url: str | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        """`http_host`/`http_port` apply only when this backend is the one that starts Serve;
        afterwards Serve's own HTTP options win. `proxy_url` overrides where clients (and the
        metrics reader) reach Serve's proxy, e.g. through a Kubernetes Service."""
        self.address = dashboard_address.rstrip("/")
        self.http_options = {"host": http_host, "port": http_port}
        self.proxy_url = proxy_url.rstrip("/") if proxy_url else None
        self.timeout = timeout_seconds
        self.session = requests.Session()
        # Reconcilers run in parallel threads; two read-modify-write PUTs must not interleave.
        self._lock = threading.Lock()

    # -- the declarative config ----------------------------------------------------------------

    def _instance(self) -> dict[str, Any]:
        response = self.session.get(self.address + APPLICATIONS_PATH, timeout=self.timeout)
        if response.status_code != 200:
            raise ServeError(f"GET {APPLICATIONS_PATH}: {response.status_code} {response.text}")
        return response.json()

    def _put(self, instance: dict[str, Any], applications: list[dict[str, Any]]) -> None:
        http_options = {
            k: v for k, v in (instance.get("http_options") or self.http_options).items() if v
        }
        body: dict[str, Any] = {"http_options": http_options, "applications": applications}
        if instance.get("proxy_location"):
            body["proxy_location"] = instance["proxy_location"]
        response = self.session.put(
            self.address + APPLICATIONS_PATH,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
            timeout=max(self.timeout, 120.0),  # the first PUT starts Serve itself
        )
        if response.status_code != 200:
            raise ServeError(f"Serve refused the config: {response.status_code} {response.text}")

    @staticmethod
    def _deployed(instance: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Every application's config as deployed, minus those already being deleted."""
        deployed = {}
        for name, app in (instance.get("applications") or {}).items():
            if app.get("status") != "DELETING" and app.get("deployed_app_config"):
                deployed[name] = app["deployed_app_config"]
        return deployed

    def apply(self, application: dict[str, Any]) -> bool:
        with self._lock:
            instance = self._instance()
            deployed = self._deployed(instance)
            if same_config(deployed.get(application["name"]), application):
                return False
            deployed[application["name"]] = application
            self._put(instance, list(deployed.values()))
            return True

    def remove(self, name: str) -> None:
        with self._lock:
            instance = self._instance()
            deployed = self._deployed(instance)
            if name not in deployed:
                return
            del deployed[name]
            self._put(instance, list(deployed.values()))

    # -- observation ---------------------------------------------------------------------------

    def state(self, name: str) -> AppState:
        app = (self._instance().get("applications") or {}).get(name)
        if app is None:
            return AppState("MISSING")
        deployments = app.get("deployments") or {}
        server = deployments.get(SERVER_DEPLOYMENT) or {}
        return AppState(
            status=app.get("status", "NOT_STARTED"),
            message=app.get("message") or "",
            config=app.get("deployed_app_config"),
            ready_replicas=sum(1 for r in server.get("replicas", []) if r["state"] in _SERVING),
            desired_replicas=int(server.get("target_num_replicas") or 0),
            deployment_messages={
                n: d["message"] for n, d in deployments.items() if d.get("message")
            },
        )

    def metrics(self, route_prefix: str, window_seconds: float) -> dict[str, Any] | None:
        return read_metrics(self.session, self.url(route_prefix), window_seconds, self.timeout)

    def url(self, route_prefix: str) -> str:
        return self._proxy() + route_prefix.rstrip("/")

    def _proxy(self) -> str:
        """Where Serve's HTTP proxy listens; learnt once from Serve, which fixes it at start."""
        if self.proxy_url:
            return self.proxy_url
        try:
            running = self._instance().get("http_options")
        except (requests.RequestException, ServeError):
            running = None
        options = running or self.http_options
        host = options.get("host") or self.http_options["host"]
        if host in ("0.0.0.0", "::"):  # listening everywhere: reach it where the dashboard is
            host = urlparse(self.address).hostname or "127.0.0.1"
        url = f"http://{host}:{options.get('port') or self.http_options['port']}"
        if running:
            self.proxy_url = url
        return url
