"""The embedded default: a local Ray head and a local MLflow server, started as child processes.

`mlplane operator` and `mlplane run` use these when no Ray address or MLflow URI is configured, and
the test fixtures use the very same code, so the tests exercise what users get.

Each service runs under a small supervisor (`python -m mlplane.operator.embedded CMD…`) that leads
its own session (process group) and holds a pipe from this process. Closing the pipe — `stop()`, or
this process dying in any way, even SIGKILL — makes the supervisor stop the service and then kill
whatever is left in its group. So a stop ends everything the service spawned and nothing else:
another Ray cluster on the same machine is never touched (`ray stop` would kill every Ray process
of the user).

The Ray head is started without `ray start --block`: in that mode any Ray subprocess that exits
early (the Ray Client server gives up after 30 s when a loaded machine starts the raylet slowly)
makes `ray start` tear the whole head down; the supervisor holds the process group instead.

Ray's processes run every job's code, so they inherit only an allowlist of the starting process's
environment (its Python, locale, proxies and package index, never its credentials) and a HOME of
their own: a tenant's training function on the operator's head finds neither the operator's AWS
keys nor its ~/.aws or ~/.kube. What a job needs comes from its spec. `mlplane run`, the user's
own run on their own machine, passes its whole environment on, as a script would see it.

Ray's token authentication is turned off for the local head (`RAY_AUTH_MODE=disabled`): every
port is bound to 127.0.0.1, so only local users can reach it, and the Jobs API client (the ray
backend) then needs no token file. A shared or remote cluster keeps its own auth settings.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlplane.serving.config import SERVE_PROCESS_ENV

LOCALHOST = "127.0.0.1"
# Below Linux's ephemeral range (32768-60999) and above Ray's worker ports (10002-19999).
SERVER_PORTS = range(20000, 32768)
# A Unix socket path may be at most 107 bytes; Ray puts sockets under
# <temp_dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store (about 60 bytes past temp_dir).
_MAX_RAY_TEMP_DIR = 44
# How long a service gets to shut down after SIGTERM before its process group is killed.
# MLflow finishes its SQLite writes. A local Ray head keeps nothing that outlives it, and its
# processes exit within about 2 s except the autoscaler's monitor, which waits out the whole
# grace for the GCS it has just lost: the full 15 s at every `mlplane run` exit.
_MLFLOW_GRACE_SECONDS = 15.0
_RAY_GRACE_SECONDS = 3.0


@dataclass
class Service:
    """A started server: what clients use to reach it, and the process group to stop it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grace_seconds: float

    def stop(self) -> None:
        """Close the supervisor's pipe, wait for it to stop the service, then clear the group."""
        if self.process.stdin:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=self.grace_seconds + 10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _running.pop(self.url, None)


_running: dict[str, Service] = {}
_heads: dict[str, str] = {}
"""Dashboard URL → GCS address of each Ray head this process started, for nodes to join."""


def stop_all() -> None:
    """Stop every service this process started (registered at exit)."""
    for service in list(_running.values()):
        service.stop()


atexit.register(stop_all)


def free_port() -> int:
    """A TCP port nobody uses right now, from SERVER_PORTS.

    Not the OS's pick (bind to port 0): that comes from the ephemeral range, the one outgoing
    connections draw their local ports from, so in the seconds before the server binds it, any
    connection on the machine could take it and the server would fail with "address in use".
    """
    for port in random.sample(SERVER_PORTS, 100):
        with socket.socket() as sock:
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS.start}-{SERVER_PORTS.stop - 1}")


def _venv_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (this interpreter's environment if None), with its bin dir first so `python`
    means this venv.

    Ray runs job entrypoints (`python -m mlplane.training …`) through a shell with the head's
    PATH; without this they could pick up another Python that has no mlplane.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def _wait_http(url: str, service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            service.stop()  # whatever it left behind
            raise RuntimeError(
                f"{service.name} exited with code {service.process.returncode}; "
                f"last log lines:\n{_tail(service.log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    service.stop()
    raise TimeoutError(
        f"{service.name} did not answer {url} within {timeout:.0f}s; "
        f"last log lines:\n{_tail(service.log_path)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _spawn(
    name: str,
    url: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    grace_seconds: float,
) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlplane.operator.embedded", str(grace_seconds), *argv],
            env=env,
            stdin=subprocess.PIPE,  # the supervisor stops the service when this pipe closes
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, url, process, log_path, grace_seconds)
    _running[url] = service
    return service


def _ray_temp_dir(data_dir: Path) -> Path:
    """`data_dir/tmp` when its socket paths fit, else a short directory under /tmp."""
    wanted = data_dir.resolve() / "tmp"
    if len(str(wanted)) <= _MAX_RAY_TEMP_DIR:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    return Path(tempfile.mkdtemp(prefix="mlplane-ray-"))


def start_local_ray(
    data_dir: Path,
    num_cpus: int = 4,
    object_store_mb: int = 400,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
) -> str:
    """Start a local Ray head bound to 127.0.0.1; return its dashboard (Jobs API) address.

    The CPU count and object store are explicit so the head never claims the whole machine, and
    every port is picked free, so it can run beside another Ray cluster (the defaults collide).
    Ray's processes, and so every job, get only an allowlist of this process's environment
    (never its credentials) plus `env`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    dashboard_port = free_port()
    url = f"http://{LOCALHOST}:{dashboard_port}"
    gcs_port = free_port()
    argv = [
        *_ray_start_args(num_cpus, object_store_mb),
        "--head",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        f"--dashboard-host={LOCALHOST}",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={_ray_temp_dir(data_dir)}",
    ]
    ray_env = _ray_env(url, _home(data_dir), env or {})
    service = _spawn("ray head", url, argv, ray_env, data_dir / "ray-head.log", _RAY_GRACE_SECONDS)
    _wait_http(f"{url}/api/version", service, timeout)
    _wait_http(f"{url}/api/jobs/", service, timeout)
    _heads[url] = f"{LOCALHOST}:{gcs_port}"
    return url


def start_local_ray_node(
    head: str,
    data_dir: Path,
    num_cpus: int,
    object_store_mb: int = 200,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> str:
    """Join one more Ray node on this machine to the head `start_local_ray` gave at `head`;
    return the node's Ray ID, which `stop` and `kill` take.

    A cluster of several raylets on one machine is how work spread over nodes, and the loss of
    one, is tried without more machines: each node has its own raylet, object store and workers.
    Its environment is made as the head's (`start_local_ray`).
    """
    marker = f"mlplane_node_{uuid.uuid4().hex[:8]}"
    argv = [
        *_ray_start_args(num_cpus, object_store_mb),
        f"--address={_heads[head]}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        # Found by this resource once it joins: the node's ID is Ray's, not known before.
        f"--resources={json.dumps({marker: 1})}",
    ]
    log = data_dir / f"ray-node-{marker}.log"
    ray_env = _ray_env(head, _home(data_dir), env or {})
    service = _spawn("ray node", marker, argv, ray_env, log, _RAY_GRACE_SECONDS)
    deadline = time.monotonic() + timeout
    while (node_id := _node_with(head, marker)) is None:
        if service.process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"ray node did not join {head}; last log lines:\n{_tail(log)}")
        time.sleep(0.5)
    del _running[marker]
    service.url = node_id
    _running[node_id] = service
    return node_id


def _node_with(head: str, resource: str) -> str | None:
    """The ID of the alive node of `head`'s cluster that has `resource`, if it joined yet."""
    try:
        with urllib.request.urlopen(f"{head}/api/v0/nodes?detail=1&limit=1000", timeout=5) as r:
            nodes = json.load(r)["data"]["result"]["result"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError):
        return None
    return next(
        (
            node["node_id"]
            for node in nodes
            if node.get("state") == "ALIVE" and resource in (node.get("resources_total") or {})
        ),
        None,
    )


def _home(data_dir: Path) -> Path:
    home = data_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def _ray_start_args(num_cpus: int, object_store_mb: int) -> list[str]:
    """`ray start` for any node of a local cluster: bound to 127.0.0.1, every port free."""
    return [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--disable-usage-stats",
        f"--node-ip-address={LOCALHOST}",
        f"--dashboard-agent-listen-port={free_port()}",
        # Given ports, the raylet does not wait for its agents to publish theirs: a dashboard
        # agent that imports slowly on a busy machine (over 15 s) would make it abort the start.
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
    ]


# What Ray's processes inherit from the process that starts them: enough to run this venv's
# Python on this machine's GPUs, locale, network (proxies, CA bundles) and package index, never
# its credentials (AWS keys, MLFLOW_TRACKING_*, KUBECONFIG, tokens). Every job runs user code in
# these processes; what a job needs besides comes from its spec.
_INHERITED = {
    *("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "VIRTUAL_ENV"),
    *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE"),
    *("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"),
}
_INHERITED_PREFIXES = ("LC_", "RAY_", "CUDA_", "NVIDIA_", "OMP_", "LD_LIBRARY_PATH", "PIP_", "UV_")


def _ray_env(head: str, home: Path, env: Mapping[str, str]) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name in _INHERITED or name.startswith(_INHERITED_PREFIXES)
    }
    # Its own HOME, so ~/.aws, ~/.kube and ~/.netrc of the starting user are not found.
    base = {**inherited, "HOME": str(home), **env}
    return _venv_env(
        base,
        # Ray's own processes look the cluster up by "auto" in places (the state API), which
        # fails once a second local cluster runs; point them at this one.
        RAY_API_SERVER_ADDRESS=head,
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        # Ray Train V2 otherwise waits ~2 s per report for its health check.
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        **SERVE_PROCESS_ENV,
    )


def start_local_mlflow(data_dir: Path, timeout: float = 120.0) -> str:
    """Start an MLflow tracking server on SQLite with served artifacts; return its URI.

    Artifacts are served through the server (`--serve-artifacts`), so training code on any Ray
    worker logs models over HTTP without sharing a filesystem with the server.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        f"--backend-store-uri=sqlite:///{data_dir / 'mlflow.db'}",
        f"--artifacts-destination={data_dir / 'artifacts'}",
        "--serve-artifacts",
        f"--host={LOCALHOST}",
        f"--port={port}",
        "--workers=1",
    ]
    env = _venv_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = data_dir / "mlflow-server.log"
    service = _spawn("mlflow server", url, argv, env, log, _MLFLOW_GRACE_SECONDS)
    _wait_http(f"{url}/health", service, timeout)
    return url


def stop(url: str) -> None:
    """Stop the service started at `url` (a no-op if it is already gone)."""
    _heads.pop(url, None)
    service = _running.get(url)
    if service:
        service.stop()


def kill(url: str) -> None:
    """End the service started at `url` at once, every process of it, as a lost machine ends."""
    service = _running.pop(url, None)
    if service:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait()


def _supervise(argv: list[str], grace_seconds: float) -> int:
    """Run `argv`, hold its process group until our stdin reaches EOF, then stop the group:
    SIGTERM, then SIGKILL for whatever is left after `grace_seconds`.

    EOF comes from `Service.stop()` or from the parent's death (the kernel closes its end of the
    pipe), which is what makes the embedded services share the fate of the process that started
    them. A service may stay in the foreground (MLflow) or start daemons and exit 0 (`ray start`);
    a non-zero exit before the stop is a failure and ends the supervisor with that code.
    """
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    stopping = threading.Event()

    def exit_on_failure() -> None:
        code = child.wait()
        if code != 0 and not stopping.is_set():
            os._exit(code)

    threading.Thread(target=exit_on_failure, daemon=True).start()
    sys.stdin.buffer.read()
    stopping.set()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the service
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while _group_members(os.getpgid(0)) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(0, signal.SIGKILL)  # whatever is left, and this supervisor
    return 0


def _group_members(pgid: int) -> int:
    """Live processes in process group `pgid` (Linux /proc; elsewhere 2, i.e. wait it out)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 2
    count = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            count += 1
    return count


if __name__ == "__main__":
    sys.exit(_supervise(sys.argv[2:], grace_seconds=float(sys.argv[1])))
