"""Start, check and stop the local control plane: etcd, the three Kubernetes components, kwok and
KubeRay's operator (with KubeRay's own CRDs), so the kuberay backend meets the controller it meets
on a real cluster.

Everything listens on 127.0.0.1 at ports chosen free at start, so several control planes (the test
session's and a developer's) can run side by side. Every process is started in its own session and
recorded in `state.json` with the binary it runs, so `down` — from any later process — stops exactly
what `up` started and never a stranger that happens to reuse a pid.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from mlplane.operator import embedded
from mlplane.operator.cluster import nodepools, pki
from mlplane.operator.cluster.build import KUBERAY, Parts, cache_root, ensure_parts, ensure_tool

KWOK_IMAGE_PULL_STAGE = Path(__file__).with_name("kwok-image-pull.yaml")
"""kwok's stand-in for a kubelet that cannot pull an image (a registry under `.invalid`)."""

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
# Order matters twice: started in this order, stopped in reverse (KubeRay first, etcd last).
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    KUBERAY.name,
)
Log = Callable[[str], None]


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message names the component and its last log lines."""


@dataclass
class ProcessRecord:
    """One started process: enough to find its log and to recognise it again before killing it."""

    name: str
    pid: int
    binary: str


@dataclass
class State:
    """What `up` leaves in `state.json` for `status` and `down`."""

    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> State:
        """The recorded state, or an empty one when nothing was ever started here."""
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        processes = [ProcessRecord(**record) for record in raw["processes"]]
        return cls(raw["ports"], processes, raw["nodes"])

    def write(self, path: Path) -> None:
        """Write atomically, so a crash mid-write never loses the pids `down` needs."""
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self), indent=2))
        partial.replace(path)


@dataclass(frozen=True)
class ComponentStatus:
    """Liveness and health of one component."""

    name: str
    pid: int | None
    alive: bool
    healthy: bool
    rss_bytes: int


@dataclass(frozen=True)
class Status:
    """What `mlplane cluster status` prints."""

    components: list[ComponentStatus]
    nodes_ready: int
    nodes_total: int
    kubeconfig: Path

    @property
    def ready(self) -> bool:
        """Every component healthy and every fake node Ready."""
        return (
            bool(self.components)
            and all(c.healthy for c in self.components)
            and self.nodes_total > 0
            and self.nodes_ready == self.nodes_total
        )

    @property
    def rss_bytes(self) -> int:
        """Resident memory of all components together (the < 1.5 GiB budget)."""
        return sum(c.rss_bytes for c in self.components)


@dataclass(frozen=True)
class UpResult:
    """What `up` did: the parts it used (and whether it built any) and how long start took."""

    parts: Parts
    already_running: bool
    start_seconds: float
    status: Status


def default_state_dir() -> Path:
    """`~/.cache/mlplane/cluster`: beside the built parts, outside any repository."""
    return cache_root() / "cluster"


class ControlPlane:
    """One local control plane, identified by its state directory."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).expanduser().resolve()
        self.pki = pki.Pki(self.state_dir / "pki")

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (a `system:masters` client certificate, data embedded)."""
        return self.state_dir / "kubeconfig"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down on one state directory (two test runs, or a test and a developer)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- up -------------------------------------------------------------------------------------

    def up(
        self, log: Log = print, timeout: float = 120.0, pools_file: Path | None = None
    ) -> UpResult:
        """Build the parts if needed, then start a fresh control plane unless a healthy one runs.

        A fresh start wipes the previous etcd data: like `kind create cluster`, every `up` gives
        a clean cluster with the fake nodes of `pools_file` (default: the pools shipped here).
        """
        pools = nodepools.load(pools_file)
        parts = ensure_parts(log)
        ensure_tool(KUBERAY, log)
        if parts.built:
            log(f"built {', '.join(parts.built)} in {parts.seconds:.0f}s")
        else:
            log(f"parts cached in {parts.bin_dir.parent}")
        with self._locked():
            status = self.status()
            if status.ready:
                log(f"already running; kubeconfig: {self.kubeconfig}")
                return UpResult(parts, True, 0.0, status)
            started = time.monotonic()
            self._stop_recorded()
            try:
                self._start(parts, pools, log, deadline=started + timeout)
            except BaseException:
                self._stop_recorded()
                raise
            status = self.status()
            seconds = time.monotonic() - started
        log(
            f"ready in {seconds:.1f}s: {status.nodes_ready} nodes, "
            f"{status.rss_bytes / 2**20:.0f} MiB RSS; kubeconfig: {self.kubeconfig}"
        )
        return UpResult(parts, False, seconds, status)

    def _start(self, parts: Parts, pools: nodepools.NodePools, log: Log, deadline: float) -> None:
        for stale in ("pki", "etcd", "logs", "kubeconfigs", "kubeconfig", "state.json"):
            target = self.state_dir / stale
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        (self.state_dir / "logs").mkdir()
        ports = _free_ports(
            ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok", "kuberay")
        )
        nodes = pools.node_manifests()
        state = State(ports=ports, nodes=[node["metadata"]["name"] for node in nodes])
        state.write(self._state_file)
        pki.generate(self.pki.directory)
        server = f"https://127.0.0.1:{ports['apiserver']}"
        for client in pki.CLIENTS:
            self._write_kubeconfig(client, server)

        def start(name: str) -> None:
            binary, args, env = self._command(name, parts, ports)
            state.processes.append(self._spawn(name, binary, args, env))
            state.write(self._state_file)

        log(f"starting etcd, kube-apiserver on {server}")
        start("etcd")
        self._wait(deadline, "etcd", lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"))
        start("kube-apiserver")
        self._wait(deadline, "kube-apiserver", lambda: self._apiserver_ok("/readyz"))
        log("starting kube-controller-manager, kube-scheduler, kwok")
        start("kube-controller-manager")
        start("kube-scheduler")
        start("kwok")
        self._create_nodes(nodes)
        for name, port in (
            ("kube-controller-manager", ports["controller-manager"]),
            ("kube-scheduler", ports["scheduler"]),
        ):
            self._wait(deadline, name, partial(_http_ok, f"https://127.0.0.1:{port}/healthz"))
        self._wait(deadline, "kwok", lambda: self._count_ready_nodes(state.nodes) == len(nodes))
        # The controller-manager creates each namespace's `default` ServiceAccount; pods need it.
        self._wait(deadline, "kube-controller-manager", self._default_service_account_exists)
        log("installing KubeRay's CRDs, starting its operator")
        crds = [self._create_crd(KUBERAY.file(path)) for path in KUBERAY.files]
        for crd in crds:
            self._wait(deadline, "kube-apiserver", partial(self._established, crd))
        start(KUBERAY.name)
        self._wait(deadline, KUBERAY.name, lambda: self._healthy(KUBERAY.name, ports))

    def _command(
        self, name: str, parts: Parts, ports: dict[str, int]
    ) -> tuple[Path, list[str], dict[str, str] | None]:
        """The binary, arguments and extra environment one component runs with: the same on a
        first start and on a restart of that one component (`start_component`)."""
        kubeconfig = self._client_kubeconfig(name.removeprefix("kube-"))
        if name == "etcd":
            return parts.binary(name), self._etcd_args(ports), None
        if name == "kube-apiserver":
            return parts.binary(name), self._apiserver_args(ports), {"GOMEMLIMIT": "600MiB"}
        if name == "kube-controller-manager":
            return parts.binary(name), self._controller_manager_args(ports, kubeconfig), None
        if name == "kube-scheduler":
            return parts.binary(name), self._scheduler_args(ports, kubeconfig), None
        if name == "kwok":
            return parts.binary(name), self._kwok_args(ports, kubeconfig, parts.kwok_stages), None
        if name == KUBERAY.name:
            return KUBERAY.binary, self._kuberay_args(ports), {"KUBECONFIG": str(self.kubeconfig)}
        raise ValueError(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")

    def _spawn(
        self, name: str, binary: Path, args: list[str], env: dict[str, str] | None
    ) -> ProcessRecord:
        log_file = self._log_file(name)
        with log_file.open("ab") as out:
            process = subprocess.Popen(
                [str(binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env={**os.environ, **(env or {})},
                # Outlives `mlplane cluster up`; a Ctrl-C in the shell that ran it spares it.
                start_new_session=True,
            )
        return ProcessRecord(name, process.pid, str(binary))

    def _wait(self, deadline: float, name: str, check: Callable[[], bool]) -> None:
        while True:
            record = next(
                (p for p in State.read(self._state_file).processes if p.name == name), None
            )
            if record is not None and not _alive(record):
                raise ControlPlaneError(f"{name} exited during start:\n{self._log_tail(name)}")
            with contextlib.suppress(Exception):
                if check():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{name} not ready in time:\n{self._log_tail(name)}")
            time.sleep(0.2)

    def _log_tail(self, name: str, lines: int = 25) -> str:
        path = self._log_file(name)
        if not path.is_file():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- flags ----------------------------------------------------------------------------------

    def _etcd_args(self, ports: dict[str, int]) -> list[str]:
        client = f"http://127.0.0.1:{ports['etcd']}"
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            "--name=mlplane",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mlplane={peer}",
            # A throwaway dev cluster: durability buys nothing, fsync costs seconds on start.
            "--unsafe-no-fsync=true",
            # Fewer raft entries kept in memory between snapshots: less RSS, same behaviour.
            "--snapshot-count=5000",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ]

    def _apiserver_args(self, ports: dict[str, int]) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={self.pki.directory}",
            f"--tls-cert-file={self.pki.apiserver_cert}",
            f"--tls-private-key-file={self.pki.apiserver_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            f"--service-account-key-file={self.pki.service_account_pub}",
            f"--service-account-signing-key-file={self.pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
            "DefaultTolerationSeconds,Priority,ResourceQuota,MutatingAdmissionWebhook,"
            "ValidatingAdmissionPolicy,ValidatingAdmissionWebhook",
            "--allow-privileged=true",
            # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints reject.
            "--endpoint-reconciler-type=none",
            # One local user: fairness queues only cost memory and latency here.
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--event-ttl=30m",
        ]

    def _controller_manager_args(self, ports: dict[str, int], kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller-manager']}",
            f"--cert-dir={self.state_dir / 'pki' / 'controller-manager-serving'}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--cluster-signing-cert-file={self.pki.ca_cert}",
            f"--cluster-signing-key-file={self.pki.ca_key}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _scheduler_args(self, ports: dict[str, int], kubeconfig: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            f"--cert-dir={self.state_dir / 'pki' / 'scheduler-serving'}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _kwok_args(self, ports: dict[str, int], kubeconfig: Path, stages: Path) -> list[str]:
        return [
            f"--kubeconfig={kubeconfig}",
            f"--config={stages}",
            f"--config={KWOK_IMAGE_PULL_STAGE}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector="
            f"{nodepools.KWOK_ANNOTATION}={nodepools.KWOK_ANNOTATION_VALUE}",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ]

    def _kuberay_args(self, ports: dict[str, int]) -> list[str]:
        return [
            f"--health-probe-bind-address=127.0.0.1:{ports['kuberay']}",
            "--metrics-addr=0",  # controller-runtime's "off"
            "--enable-leader-election=false",
            # Outside the cluster network, as an operator on a laptop is: Ray heads are reached
            # through the API server's service proxy.
            "--use-kubernetes-proxy",
            "--log-stdout-encoder=console",
        ]

    def _write_kubeconfig(self, client: pki.Client, server: str) -> Path:
        """Admin kubeconfig at the top, one per component under `kubeconfigs/`; data embedded so
        the file works copied anywhere on this machine."""

        def data(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mlplane",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": data(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": client.user,
                    "user": {
                        "client-certificate-data": data(self.pki.client_cert(client)),
                        "client-key-data": data(self.pki.client_key(client)),
                    },
                }
            ],
            "contexts": [
                {"name": "mlplane", "context": {"cluster": "mlplane", "user": client.user}}
            ],
            "current-context": "mlplane",
        }
        if client is pki.ADMIN:
            path = self.kubeconfig
        else:
            path = self._client_kubeconfig(client.stem)
            path.parent.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _client_kubeconfig(self, stem: str) -> Path:
        return self.state_dir / "kubeconfigs" / f"{stem}.kubeconfig"

    # --- talking to the apiserver --------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(self.pki.client_cert(pki.ADMIN), self.pki.client_key(pki.ADMIN))
        return context

    def _api(self, method: str, path: str, body: Any = None, timeout: float = 5) -> Any:
        """A tiny admin client: starting stays free of the `kubernetes` package's import cost."""
        port = State.read(self._state_file).ports["apiserver"]
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(
            request, context=self._ssl_context(), timeout=timeout
        ) as response:
            payload = response.read()
        return json.loads(payload) if payload[:1] == b"{" else payload.decode()

    def _apiserver_ok(self, path: str) -> bool:
        return self._api("GET", path) == "ok"

    def _create_nodes(self, nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            try:
                self._api("POST", "/api/v1/nodes", node)
            except urllib.error.HTTPError as error:
                if error.code != 409:
                    raise

    def _count_ready_nodes(self, names: list[str]) -> int:
        """How many of the named nodes are Ready."""
        wanted = set(names)
        nodes = self._api("GET", "/api/v1/nodes")["items"]
        ready = sum(
            1
            for node in nodes
            if node["metadata"]["name"] in wanted
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
        )
        return ready

    def _create_crd(self, path: Path) -> str:
        """Create the CRD in `path` (a fresh cluster has none); its name."""
        body = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # ~1 MiB each
        self._api(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body, timeout=60
        )
        return body["metadata"]["name"]

    def _established(self, crd: str) -> bool:
        found = self._api("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}")
        conditions = found.get("status", {}).get("conditions", [])
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    def _default_service_account_exists(self) -> bool:
        return bool(self._api("GET", "/api/v1/namespaces/default/serviceaccounts/default"))

    # --- status and down ------------------------------------------------------------------------

    def status(self) -> Status:
        """Probe every recorded process and the apiserver; never raises for a stopped cluster."""
        state = State.read(self._state_file)
        by_name = {record.name: record for record in state.processes}
        components = []
        for name in COMPONENTS:
            record = by_name.get(name)
            alive = record is not None and _alive(record)
            healthy = alive and self._healthy(name, state.ports)
            components.append(
                ComponentStatus(
                    name,
                    record.pid if record else None,
                    alive,
                    healthy,
                    _rss(record.pid) if alive and record else 0,
                )
            )
        ready = 0
        if components[1].healthy:
            with contextlib.suppress(Exception):
                ready = self._count_ready_nodes(state.nodes)
        return Status(
            components if state.processes else [], ready, len(state.nodes), self.kubeconfig
        )

    def _healthy(self, name: str, ports: dict[str, int]) -> bool:
        checks: dict[str, Callable[[], bool]] = {
            "etcd": lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"),
            "kube-apiserver": lambda: self._apiserver_ok("/readyz"),
            "kube-controller-manager": lambda: _http_ok(
                f"https://127.0.0.1:{ports['controller-manager']}/healthz"
            ),
            "kube-scheduler": lambda: _http_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz"),
            "kwok": lambda: _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"),
            KUBERAY.name: lambda: _http_ok(f"http://127.0.0.1:{ports['kuberay']}/readyz"),
        }
        try:
            return checks[name]()
        except (OSError, KeyError, ValueError):
            return False

    def down(self, log: Log = print) -> list[int]:
        """Stop every process `up` recorded here; return their pids (all gone on return)."""
        with self._locked():
            pids = self._stop_recorded()
        log(f"stopped {len(pids)} process(es)" if pids else "nothing running")
        return pids

    def stop_component(self, name: str) -> None:
        """Stop one component and leave the rest running, its state kept (etcd's data, the
        certificates, its port) for `start_component`: an outage of that one part, as when a
        managed cluster's API server is upgraded or crashes. Returns once the process is gone."""
        with self._locked():
            record = self._record(name)
            if record is not None and _alive(record):
                _terminate(record)

    def start_component(self, name: str, log: Log = print, timeout: float = 120.0) -> None:
        """Start one component `stop_component` stopped, with the same command line, and wait
        until it is healthy. Its record takes the old one's place, so `down` still stops the
        components in reverse start order."""
        with self._locked():
            state = State.read(self._state_file)
            old = self._record(name)
            if old is not None and _alive(old):
                return
            binary, args, env = self._command(name, ensure_parts(log), state.ports)
            record = self._spawn(name, binary, args, env)
            at = state.processes.index(old) if old else len(state.processes)
            state.processes[at : at + 1] = [record]
            state.write(self._state_file)
            deadline = time.monotonic() + timeout
            self._wait(deadline, name, lambda: self._healthy(name, state.ports))
        log(f"{name} started again (pid {record.pid})")

    def _record(self, name: str) -> ProcessRecord | None:
        """The last recorded process of component `name`, alive or not."""
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")
        return next((r for r in State.read(self._state_file).processes if r.name == name), None)

    def _stop_recorded(self) -> list[int]:
        """Stop in reverse start order, one at a time: an apiserver whose etcd vanished first
        hangs in shutdown for many seconds, one stopped before its etcd exits in about one."""
        state = State.read(self._state_file)
        running = [record for record in reversed(state.processes) if _alive(record)]
        for record in running:
            _terminate(record)
        state.processes = []
        if self._state_file.exists():
            state.write(self._state_file)
        return [record.pid for record in running]


def _terminate(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(record):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        _reap(record)
        time.sleep(0.05)
    _reap(record)


def _free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct free loopback ports, one per name."""
    ports: set[int] = set()
    while len(ports) < len(names):
        ports.add(embedded.free_port())
    return dict(zip(names, sorted(ports), strict=True))


def _http_ok(url: str) -> bool:
    """GET a health endpoint. Component serving certificates are self-signed and this is
    loopback, so they are not verified; the apiserver (which carries data) is, in `_api`."""
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(url, context=context, timeout=2) as response:
        return response.status == 200


def _alive(record: ProcessRecord) -> bool:
    """Running (not a zombie) and still the binary we started, not a reused pid.

    A process that Popen has just returned may not have its command line yet: the kernel closes
    the exec pipe Popen waits on before it sets up the new arguments, so an empty one (on a
    busy machine, for milliseconds) is judged by the executable instead, which is the binary's
    real path: both are resolved, so a cache directory behind a symlink is no other binary."""
    proc = Path("/proc") / str(record.pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode()
        if not argv0:
            argv0 = os.readlink(proc / "exe")
    except (OSError, IndexError):
        return False
    return state != "Z" and Path(argv0).resolve() == Path(record.binary).resolve()


def _reap(record: ProcessRecord) -> None:
    """Collect the exit status of our own child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(record.pid, os.WNOHANG)


def _rss(pid: int) -> int:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
