"""Session fixtures for the real local Kubernetes control plane (no mocked client).

One control plane serves the whole session; each test gets a fresh namespace. The Go-built parts
are compiled once per machine (then cached) right after collection when any `cluster` test is
selected, with progress printed past pytest's capture so a long first build never looks like a
hang. `MLPLANE_KUBECONFIG` points the suite at an
existing cluster instead. Under `CI=true` a control plane that cannot start fails the run: a
skipped integration suite would pass silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from service_fixtures import unavailable

from mlplane.operator.cluster.build import (
    HELM,
    KUBERAY,
    Parts,
    cache_root,
    ensure_parts,
    ensure_tool,
)
from mlplane.operator.cluster.controlplane import ControlPlane

CRDS_DIR = Path(__file__).resolve().parent.parent / "crds"
ESTABLISHED_TIMEOUT = 60.0
_PARTS = pytest.StashKey["Parts | Exception"]()
_HELM = pytest.StashKey["Path | Exception"]()
T = TypeVar("T")


@contextlib.contextmanager
def _uncaptured(pytestconfig: pytest.Config) -> Iterator[None]:
    """Let build/start progress reach the terminal even while pytest captures output."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        yield


def _progress(message: str) -> None:
    print(f"[mlplane cluster] {message}", file=sys.stderr, flush=True)


def _built(config: pytest.Config, build: Callable[[], T]) -> T | Exception:
    """Build (or find cached), keeping a failure for the fixture to report."""
    with _uncaptured(config):
        try:
            return build()
        except Exception as error:
            return error


def _build_parts(config: pytest.Config) -> Parts | Exception:
    def build() -> Parts:
        ensure_tool(KUBERAY, _progress)  # the control plane runs KubeRay's operator too
        return ensure_parts(_progress)

    return _built(config, build)


def _build_helm(config: pytest.Config) -> Path | Exception:
    return _built(config, lambda: ensure_tool(HELM, _progress)[0])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the parts (and helm) before the first test runs when a test needs them.

    A first build takes about ten minutes on two cores; done here it never counts against a
    test's timeout, and a run without cluster tests never pays for it.
    """
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("cluster") for item in session.items):
        session.config.stash[_PARTS] = _build_parts(session.config)
    if any("helm" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[_HELM] = _build_helm(session.config)


def _ready(
    config: pytest.Config,
    key: pytest.StashKey[T | Exception],
    build: Callable[[pytest.Config], T | Exception],
    what: str,
) -> T:
    """What was built at collection, or is built now; unavailable if the build failed."""
    outcome = config.stash.get(key, None) or build(config)
    if isinstance(outcome, Exception):
        unavailable(f"cannot build {what}", outcome)
    return outcome


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config) -> Path:
    """The helm binary, built from its Go module once per machine (like the control plane)."""
    return _ready(pytestconfig, _HELM, _build_helm, "helm")


@pytest.fixture(scope="session")
def cluster_parts(pytestconfig: pytest.Config) -> Parts:
    """The Go-built binaries (kube-*, etcd, kwok); built at collection, or now if unmarked."""
    return _ready(pytestconfig, _PARTS, _build_parts, "the local control plane")


@pytest.fixture(scope="session")
def kubeconfig(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Iterator[Path]:
    """Admin kubeconfig of the session's control plane (or of `$MLPLANE_KUBECONFIG`)."""
    if external := os.environ.get("MLPLANE_KUBECONFIG"):
        yield Path(external)
        return
    request.getfixturevalue("cluster_parts")
    # Its own state directory: the suite never wipes or reuses a developer's `mlplane cluster up`.
    plane = ControlPlane(cache_root() / "test-cluster")
    with _uncaptured(pytestconfig):
        try:
            result = plane.up(_progress)
        except Exception as error:
            unavailable("the local control plane did not start", error)
    yield plane.kubeconfig
    # A control plane found already running belongs to whoever started it; leave it up.
    if not result.already_running:
        with _uncaptured(pytestconfig):
            plane.down(_progress)


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A real `kubernetes` API client for the session's control plane."""
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def crds(k8s_api: client.ApiClient) -> list[str]:
    """Install (or update) every CRD in `crds/*.yaml` and wait until each is Established."""
    extensions = client.ApiextensionsV1Api(k8s_api)
    names = []
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            _apply_crd(extensions, document)
            names.append(document["metadata"]["name"])
    for name in names:
        _wait_established(extensions, name)
    return names


def _apply_crd(extensions: client.ApiextensionsV1Api, body: dict[str, Any]) -> None:
    """Create, or replace a CRD left by an earlier session on a reused cluster."""
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise
        name = body["metadata"]["name"]
        current = extensions.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        extensions.replace_custom_resource_definition(name, body)


def _wait_established(extensions: client.ApiextensionsV1Api, name: str) -> None:
    deadline = time.monotonic() + ESTABLISHED_TIMEOUT
    while time.monotonic() < deadline:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not Established within {ESTABLISHED_TIMEOUT:.0f}s")


@contextlib.contextmanager
def fresh_namespace(api: client.ApiClient, named_after: str) -> Iterator[str]:
    """A new namespace named after `named_after`, with its `default` ServiceAccount; deleted
    on exit."""
    core = client.CoreV1Api(api)
    slug = re.sub(r"[^a-z0-9]+", "-", named_after.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"mlplane.dev/test": "true"}}})
    # Pods are rejected until the controller-manager has created the namespace's ServiceAccount.
    deadline = time.monotonic() + 30
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, k8s_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace named after the test; deleted after.

    It does not pull in `crds`: a test of the cluster itself must not fail on a broken CRD.
    Tests of mlplane's resources ask for `crds` as well.
    """
    with fresh_namespace(k8s_api, request.node.name) as name:
        yield name
