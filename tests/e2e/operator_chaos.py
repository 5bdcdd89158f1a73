"""The operator SIGKILLed again and again while GPU jobs run and queue on KubeRay (issue #23).

Shared by bench/operator_kills.py (the long run: 20 jobs, 50 kills) and
tests/e2e/test_operator_kills.py (the short one), so both measure the same thing the same way.
Nothing here is mocked: `mlplane operator` runs as users run it, against a real kube-apiserver
and KubeRay's own operator, on kwok GPU nodes. Four parts run at once:

- an applier creates the TrainingJobs one after another, in order, each asking a whole number of
  a100 GPUs, into a namespace whose quota admits only a few of them at a time, so jobs wait Queued
  across kills;
- a driver plays the Ray job inside each RayJob, which kwok's pods cannot run: once KubeRay has
  brought a RayJob to Running it reports RUNNING (again and again, as KubeRay writes its failed
  dashboard query over the report), and after a short random time records the job's MLflow run
  (tagged with the TrainingJob's UID, as the runner does first) and reports SUCCEEDED; the last
  job runs on until the last kill, so that every kill falls while a job is unfinished;
- a killer SIGKILLs the operator's whole process group (no shutdown of any kind), at a random time
  after it came back healthy or right after something it must not lose: a job applied (the
  admission step), a job admitted but not yet submitted, a RayJob created (the submit window
  before its status is written); it restarts the operator at once and repeats;
- a monitor reads the namespace every ~0.1 s for the whole run and counts what must never happen.

The invariants, each as the monitor sees it from outside the operator:

- duplicate submissions: a TrainingJob with more RayJobs over the run (distinct UIDs, a deleted
  and re-created one included) than its status.attempts, or any RayJob of attempt 2 or later:
  no Ray job here ever fails, so a second attempt can only be a second submission;
- lost jobs: a TrainingJob not Succeeded when the run ends (a deadline after the last kill);
- GPU-seconds over quota: the integral over time of max(0, GPUs of the namespace's RayJobs that
  have not finished - the quota), a RayJob's GPUs read from its own worker groups;
- jobs running while Queued: a TrainingJob whose phase is Queued while one of its RayJobs exists
  that has not finished. RayJobs are read before TrainingJobs in each sample, so a job admitted
  between the two reads is never counted: a RayJob read first existed when its job showed Queued.

The seed fixes the kill plan (which trigger, which delays) and the jobs' run times; the
interleaving with the operator's own steps differs from run to run, which is the point.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from mlflow import MlflowClient

from mlplane.crds.base import GROUP, VERSION
from mlplane.operator import embedded
from mlplane.training.tags import RUN_UID_TAG
from mlplane.training.tracking import experiment_id

RAY = ("ray.io", "v1")
GPU = "nvidia.com/gpu"
FINISHED = {"Complete", "Failed", "ValidationFailed"}
"""KubeRay's jobDeploymentStatus of a RayJob whose Ray job is over: it holds no quota."""
TRIGGERS = {"random": 0.5, "apply": 0.2, "rayjob": 0.2, "admitted": 0.1}
"""How often each kind of kill is chosen. random: 0.3-5 s after the operator came back healthy;
apply: within 0.3 s of a job's create call; rayjob: within 0.3 s (half of them at once) of a
RayJob appearing; admitted: as soon as a job shows Starting with no RayJob on its status yet."""

Log = Callable[[str], None]


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def training_job(name: str, gpus: int) -> dict[str, Any]:
    """A job on one a100 worker holding `gpus` GPUs (an a100 node has 8)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "framework": "xgboost",
            "dataset": {"uri": "sklearn://iris", "label": "target"},
            "resources": {
                "workers": 1,
                "perWorker": {"cpu": 2, "memory": "8Gi", "gpu": gpus},
                "nodePool": "a100",
            },
        },
    }


def operator_config(
    namespace: str, mlflow_uri: str, workdir: Path, pools_file: Path, quota_gpus: int
) -> dict[str, Any]:
    """The kuberay backend, 1 s observe interval, an a100 quota in the one namespace."""
    return {
        "backend": "kuberay",
        "mlflow_tracking_uri": mlflow_uri,
        "data_dir": str(workdir / "data"),
        "observe_interval_seconds": 1.0,
        "node_pools_file": str(pools_file),
        "gpu_quotas": {namespace: {"a100": quota_gpus}},
        "ray_image": "mlplane/runtime:test",
        "checkpoint_storage": "s3://checkpoints/kills",  # named only: kwok pods run nothing
    }


class Operator:
    """`mlplane operator` as a process group of its own: a SIGKILL to the group ends every
    process of it at once, as a node's death or the OOM killer would, and nothing else."""

    def __init__(
        self, workdir: Path, kubeconfig: Path, config: dict[str, Any], namespace: str
    ) -> None:
        config_file = workdir / "operator.yaml"
        config_file.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "operator.log"
        self.health_url = f"http://127.0.0.1:{embedded.free_port()}/healthz"
        # The file alone configures it: a developer's MLPLANE_* variables would override it.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLANE_")}
        self.env["KUBECONFIG"] = str(kubeconfig)
        self.args = [
            str(Path(sys.executable).parent / "mlplane"),
            "operator",
            *("--namespace", namespace),
            *("--config", str(config_file)),
            *("--liveness", self.health_url),
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, which `kill` ends
            )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until its /healthz answers 200 (kopf has started); fails with the log's tail
        if it exits or stays silent."""
        began = time.monotonic()
        while not self.healthy():
            alive = self.process is not None and self.process.poll() is None
            if not alive or time.monotonic() - began > timeout:
                raise RuntimeError(
                    f"the operator did not come up ({'running' if alive else 'exited'}): "
                    f"{self.log()[-3000:]}"
                )
            time.sleep(0.05)
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL to the whole process group: no handler, no finalizer, no status write runs."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process:
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def owner_uid(rayjob: dict[str, Any]) -> str | None:
    owners = rayjob["metadata"].get("ownerReferences") or []
    return owners[0]["uid"] if owners else None


def attempt_of(rayjob: dict[str, Any]) -> int:
    """`<job>-a<attempt>`, as the kuberay backend names them."""
    return int(rayjob["metadata"]["name"].rsplit("-a", 1)[1])


def rayjob_gpus(rayjob: dict[str, Any]) -> int:
    """The GPUs a RayJob's cluster holds: its worker groups' replicas times their GPU limit."""
    total = 0
    for group in rayjob["spec"].get("rayClusterSpec", {}).get("workerGroupSpecs", []):
        containers = group["template"]["spec"]["containers"]
        per_pod = sum(
            int((c.get("resources") or {}).get("limits", {}).get(GPU, 0)) for c in containers
        )
        total += per_pod * int(group.get("replicas", 1))
    return total


def deployment(rayjob: dict[str, Any]) -> str:
    return (rayjob.get("status") or {}).get("jobDeploymentStatus") or ""


def phase(job: dict[str, Any]) -> str | None:
    return (job.get("status") or {}).get("phase")


def ray_ref(job: dict[str, Any]) -> str | None:
    """The RayJob the job's status names: set once a step has written its submit down."""
    return ((job.get("status") or {}).get("ray") or {}).get("rayJob")


@dataclass
class Violation:
    """One stretch of time an invariant did not hold for a job (times in s from the start)."""

    invariant: str
    job: str
    first: float
    last: float
    samples: int
    detail: str
    sequence: list[str] = field(default_factory=list)


@dataclass
class Kill:
    """One SIGKILL: why then, and what was in flight when it landed (times in s from start)."""

    at: float
    kind: str
    """random, apply, rayjob or admitted (TRIGGERS)."""
    trigger: str
    uptime: float
    """Seconds from the operator answering healthy to the kill."""
    landed: list[str]
    unfinished: int
    """Jobs applied or still to apply that had not Succeeded: a kill with none hit an idle
    operator, not a job's lifecycle."""
    restart: float = 0.0
    """Seconds from the restart to /healthz answering again."""


class Namespace:
    """The run's namespace as the driver, monitor and killer read it."""

    def __init__(self, api: client.ApiClient, namespace: str, started: float) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.started = started
        self.timeline: list[tuple[float, str, str]] = []
        """(s from start, job or "operator", what happened): the sequence a violation shows."""
        self.lock = threading.Lock()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def note(self, who: str, what: str) -> None:
        with self.lock:
            self.timeline.append((self.now(), who, what))

    def rayjobs(self) -> list[dict[str, Any]]:
        return self.objects.list_namespaced_custom_object(*RAY, self.namespace, "rayjobs")["items"]

    def trainingjobs(self) -> list[dict[str, Any]]:
        return self.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "trainingjobs"
        )["items"]

    def report(self, rayjob: str, status: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object_status(
            *RAY, self.namespace, "rayjobs", rayjob, {"status": status}
        )

    def sequence(self, job: str, first: float, last: float) -> list[str]:
        """What the job and the operator went through around [first, last]."""
        with self.lock:
            entries = list(self.timeline)
        return [
            f"{at:8.2f}s {who}: {what}"
            for at, who, what in entries
            if who == job
            or ((who == "operator" or job == "namespace") and first - 15 <= at <= last + 2)
        ]


class Loop(threading.Thread):
    """A daemon thread calling `step` every `every` s until stopped. An exception (the API
    server slow to answer on a loaded machine) is counted and the loop goes on; the first of
    each kind is kept for the report."""

    def __init__(self, name: str, every: float) -> None:
        super().__init__(name=name, daemon=True)
        self.every = every
        self.stopped = threading.Event()
        self.errors: Counter[str] = Counter()
        self.first_errors: dict[str, str] = {}

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.step()
            except Exception as error:  # counted and shown in the report, not hidden
                kind = type(error).__name__
                self.errors[kind] += 1
                self.first_errors.setdefault(kind, traceback.format_exc(limit=3))
            self.stopped.wait(self.every)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=30)


class Driver(Loop):
    """Plays each RayJob's Ray job, which kwok's pods cannot run, on top of KubeRay's status.
    A Ray job runs on past its drawn end for as long as `hold()` says so."""

    def __init__(
        self,
        ns: Namespace,
        mlflow_uri: str,
        rng: random.Random,
        run_seconds: tuple[float, float],
        hold: Callable[[], bool],
    ) -> None:
        super().__init__("driver", 0.2)
        self.ns = ns
        self.mlflow = MlflowClient(mlflow_uri)
        self.rng = rng
        self.run_seconds = run_seconds
        self.hold = hold
        self.ends: dict[str, float] = {}
        """RayJob UID → when its Ray job ends (monotonic), drawn when KubeRay first runs it."""
        self.reported: dict[str, float] = {}
        self.recorded: set[str] = set()
        """TrainingJob UIDs whose MLflow run exists: the runner makes one per job."""

    def step(self) -> None:
        jobs = {j["metadata"]["uid"]: j for j in self.ns.trainingjobs()}
        for rayjob in self.ns.rayjobs():
            name, uid = rayjob["metadata"]["name"], rayjob["metadata"]["uid"]
            status = rayjob.get("status") or {}
            done = deployment(rayjob) == "Complete" and status.get("jobStatus") == "SUCCEEDED"
            if done or deployment(rayjob) in FINISHED:
                continue
            if uid not in self.ends:
                if deployment(rayjob) != "Running":
                    continue  # KubeRay has not started its cluster and submitter yet
                self.ends[uid] = time.monotonic() + self.rng.uniform(*self.run_seconds)
                self.ns.note(name.rsplit("-a", 1)[0], f"KubeRay runs {name}")
            now = time.monotonic()
            if now < self.ends[uid] or self.hold():
                # KubeRay asks a Running RayJob's dashboard, which kwok pods do not serve, and
                # writes its error over the report: a live dashboard would say RUNNING each time.
                if status.get("jobStatus") != "RUNNING" or now - self.reported.get(uid, 0) > 1:
                    self.ns.report(name, {"jobStatus": "RUNNING"})
                    self.reported[uid] = now
                continue
            owner = jobs.get(owner_uid(rayjob) or "")
            if owner is None:
                continue
            job = owner["metadata"]["name"]
            if owner["metadata"]["uid"] not in self.recorded:
                # What the runner writes first: the run the operator reads when the job ends.
                self.mlflow.create_run(
                    experiment_id(self.mlflow, f"{self.ns.namespace}/{job}"),
                    run_name=job,
                    tags={RUN_UID_TAG: owner["metadata"]["uid"]},
                )
                self.recorded.add(owner["metadata"]["uid"])
            self.ns.report(name, {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"})
            self.ns.note(job, f"its Ray job ended SUCCEEDED ({name})")


class Monitor(Loop):
    """Reads the namespace every ~0.1 s and keeps each violation's stretches of time."""

    def __init__(self, ns: Namespace, quota_gpus: int) -> None:
        super().__init__("monitor", 0.1)
        self.ns = ns
        self.quota = quota_gpus
        self.samples = 0
        self.last_sample: float | None = None
        self.max_gap = 0.0
        self.gpu_seconds_over = 0.0
        self.max_gpus_held = 0
        self.rayjob_uids: dict[str, set[str]] = defaultdict(set)
        """TrainingJob UID → the UIDs of every RayJob of it seen in the run."""
        self.rayjob_names: dict[str, set[str]] = defaultdict(set)
        self.failed: set[str] = set()
        """TrainingJob UIDs one of whose RayJobs failed: only they may have a next attempt."""
        self.seen_deployment: dict[str, str] = {}
        self.phases: dict[str, str | None] = {}
        self.names: dict[str, str] = {}
        self.open: dict[tuple[str, str], Violation] = {}
        self.violations: list[Violation] = []
        self.lock = threading.Lock()

    def step(self) -> None:
        # RayJobs first: a RayJob read before its job's phase existed when that phase was true.
        rayjobs = self.ns.rayjobs()
        jobs = self.ns.trainingjobs()
        at = self.ns.now()
        gap = at - self.last_sample if self.last_sample is not None else 0.0
        with self.lock:
            self.samples += 1
            self.max_gap = max(self.max_gap, gap)
            self.last_sample = at
            self._sample(at, gap, rayjobs, jobs)

    def _sample(
        self, at: float, gap: float, rayjobs: list[dict[str, Any]], jobs: list[dict[str, Any]]
    ) -> None:
        for job in jobs:
            uid, name = job["metadata"]["uid"], job["metadata"]["name"]
            self.names[uid] = name
            now_phase = phase(job)
            if uid not in self.phases or self.phases[uid] != now_phase:
                ray = ray_ref(job) or "none"
                attempts = (job.get("status") or {}).get("attempts", 0)
                self.ns.note(name, f"phase {now_phase} (status.ray: {ray}, attempts {attempts})")
                self.phases[uid] = now_phase
        active: dict[str, list[str]] = defaultdict(list)  # job UID → its unfinished RayJobs
        held = 0
        for rayjob in rayjobs:
            name, uid = rayjob["metadata"]["name"], rayjob["metadata"]["uid"]
            owner = owner_uid(rayjob) or "?"
            job = self.names.get(owner, name.rsplit("-a", 1)[0])
            if uid not in self.rayjob_uids[owner]:
                self.ns.note(job, f"RayJob {name} created (uid {uid[:8]})")
            self.rayjob_uids[owner].add(uid)
            self.rayjob_names[owner].add(name)
            if self.seen_deployment.get(uid) != deployment(rayjob):
                self.seen_deployment[uid] = deployment(rayjob)
                self.ns.note(job, f"{name} jobDeploymentStatus {deployment(rayjob) or '-'}")
            if deployment(rayjob) not in FINISHED:
                held += rayjob_gpus(rayjob)
                active[owner].append(name)
            elif deployment(rayjob) != "Complete":
                self.failed.add(owner)
            if owner in self.failed:
                continue
            if attempt_of(rayjob) > 1:
                self._seen(at, "duplicate submission", job, f"{name}: no attempt ever failed")
            if len(self.rayjob_uids[owner]) > 1:
                self._seen(
                    at,
                    "duplicate submission",
                    job,
                    f"{len(self.rayjob_uids[owner])} RayJobs over the run: "
                    f"{sorted(self.rayjob_names[owner])}",
                )
        self.max_gpus_held = max(self.max_gpus_held, held)
        if held > self.quota:
            self.gpu_seconds_over += (held - self.quota) * gap
            holders = sorted(n for names in active.values() for n in names)
            self._seen(at, "GPUs over quota", "namespace", f"{held} > {self.quota}: {holders}")
        for job in jobs:
            uid = job["metadata"]["uid"]
            if phase(job) == "Queued" and active.get(uid):
                self._seen(
                    at,
                    "running while Queued",
                    job["metadata"]["name"],
                    f"Queued while {active[uid]} not finished",
                )
        self._close(at)

    def _seen(self, at: float, invariant: str, job: str, detail: str) -> None:
        key = (invariant, job)
        found = self.open.get(key)
        if found:
            found.last, found.samples = at, found.samples + 1
            return
        self.open[key] = Violation(invariant, job, at, at, 1, detail)
        self.ns.note(job, f"VIOLATION {invariant}: {detail}")

    def _close(self, at: float) -> None:
        """Stretches not seen in this sample are over."""
        for key, found in list(self.open.items()):
            if found.last < at:
                self.violations.append(self.open.pop(key))

    def all_violations(self) -> list[Violation]:
        with self.lock:
            return [*self.violations, *self.open.values()]


class Applier(Loop):
    """Creates the jobs in order. Job i is due once fewer than `backlog` applied jobs are
    unfinished (one runs, the rest wait Queued behind it) and the kills have caught up with its
    share of them, (i - 2) * kills / jobs * 0.9: the kills spread over all the jobs' lifecycles
    whether jobs run faster than the kills come or slower, and the last job is out before the
    last tenth of the kills."""

    def __init__(
        self, ns: Namespace, monitor: Monitor, jobs: int, gpus: int, backlog: int, kills: int
    ) -> None:
        super().__init__("applier", 0.2)
        self.ns, self.monitor = ns, monitor
        self.names = [f"job-{j:02d}" for j in range(jobs)]
        self.gpus, self.backlog, self.kills = gpus, backlog, kills
        self.applied = 0
        self.kills_done = 0
        self.apply_lock = threading.Lock()

    def succeeded(self) -> int:
        with self.monitor.lock:
            return sum(p == "Succeeded" for p in self.monitor.phases.values())

    def apply_next(self, force: bool = False) -> str | None:
        """Create the next job if it is due (or `force`d by the killer); its name, or None."""
        with self.apply_lock:
            if self.applied >= len(self.names):
                return None
            if not (force or self._due()):
                return None
            name = self.names[self.applied]
            self.ns.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.ns.namespace, "trainingjobs", training_job(name, self.gpus)
            )
            self.applied += 1
            self.ns.note(name, "applied")
            return name

    def _due(self) -> bool:
        unfinished = self.applied - self.succeeded()
        share = (self.applied - 2) * self.kills / len(self.names) * 0.9
        return unfinished < self.backlog and self.kills_done >= share

    def waiting(self) -> bool:
        """Whether an applied job has yet to be admitted and submitted: something for a kill
        after an admission or a RayJob's creation to wait for."""
        with self.monitor.lock:
            phases = list(self.monitor.phases.values())
        return self.applied > len(phases) or any(p in (None, "Pending", "Queued") for p in phases)

    def step(self) -> None:
        self.apply_next()


class Killer:
    """SIGKILLs the operator at seeded points and restarts it at once."""

    def __init__(
        self,
        ns: Namespace,
        operator: Operator,
        applier: Applier,
        rng: random.Random,
        startup_timeout: float,
        trigger_wait: float,
        log: Log,
    ) -> None:
        self.ns, self.operator, self.applier = ns, operator, applier
        self.trigger_wait = trigger_wait
        """The longest to wait for a trigger (no RayJob may be due) before killing anyway."""
        self.rng = rng
        self.startup_timeout = startup_timeout
        self.log = log
        self.kills: list[Kill] = []

    def start(self) -> float:
        self.operator.start()
        took = self.operator.wait_healthy(self.startup_timeout)
        self.ns.note("operator", f"healthy, {took:.1f} s after its start")
        return took

    def kill_once(self) -> Kill:
        healthy = time.monotonic()
        kind = self.rng.choices(list(TRIGGERS), weights=list(TRIGGERS.values()))[0]
        delay = self.rng.uniform(0.0, 0.3) if self.rng.random() < 0.5 else 0.0
        wait = self.rng.uniform(0.3, 5.0)
        trigger = f"random {wait:.2f}s"
        if kind == "apply" and (job := self.applier.apply_next(force=True)):
            trigger = f"apply {job} +{delay:.2f}s"
        elif kind == "rayjob" and self.applier.waiting() and (made := self._next_rayjob()):
            trigger = f"RayJob {made} created +{delay:.2f}s"
        elif kind == "admitted" and self.applier.waiting() and (job := self._next_admitted()):
            trigger, delay = f"{job} admitted, no RayJob on its status", 0.0
        if trigger.startswith("random"):
            # No job left to apply, or none admitted or submitted within the wait.
            trigger += f" (drawn: {kind})" if kind != "random" else ""
            kind, delay = "random", wait
        time.sleep(delay)
        uptime = time.monotonic() - healthy
        self.operator.kill()
        unfinished = len(self.applier.names) - self.applier.succeeded()
        kill = Kill(self.ns.now(), kind, trigger, round(uptime, 2), self._in_flight(), unfinished)
        self.ns.note("operator", f"SIGKILL ({trigger}); in flight: {kill.landed or 'nothing'}")
        self.applier.kills_done += 1
        kill.restart = round(self.start(), 2)
        self.kills.append(kill)
        self.log(f"kill {len(self.kills)} at {kill.at:.1f}s: {trigger}; landed {kill.landed}")
        return kill

    def _next_rayjob(self) -> str | None:
        """The name of the next RayJob created, seen on a watch as it happens."""
        found = self.ns.objects.list_namespaced_custom_object(*RAY, self.ns.namespace, "rayjobs")
        stream = watch.Watch()
        deadline = time.monotonic() + self.trigger_wait
        for event in stream.stream(
            self.ns.objects.list_namespaced_custom_object,
            *RAY,
            self.ns.namespace,
            "rayjobs",
            resource_version=found["metadata"]["resourceVersion"],
            timeout_seconds=int(self.trigger_wait),
        ):
            if event["type"] == "ADDED":
                stream.stop()
                return str(event["object"]["metadata"]["name"])
            if time.monotonic() > deadline:
                stream.stop()
        return None

    def _next_admitted(self) -> str | None:
        """A job the moment it shows Starting with no RayJob on its status: its admission is
        written and its submit is next."""
        found = self.ns.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.ns.namespace, "trainingjobs"
        )
        stream = watch.Watch()
        deadline = time.monotonic() + self.trigger_wait
        for event in stream.stream(
            self.ns.objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.ns.namespace,
            "trainingjobs",
            resource_version=found["metadata"]["resourceVersion"],
            timeout_seconds=int(self.trigger_wait),
        ):
            job = event["object"]
            if phase(job) == "Starting" and not ray_ref(job):
                stream.stop()
                return str(job["metadata"]["name"])
            if time.monotonic() > deadline:
                stream.stop()
        return None

    def _in_flight(self) -> list[str]:
        """What the kill interrupted, read while no operator runs (RayJobs first, as the
        monitor reads them): a RayJob its job's status does not name yet (the submit window),
        a job admitted with no RayJob yet, a job no step has decided on."""
        rayjobs = self.ns.rayjobs()
        jobs = self.ns.trainingjobs()
        made: dict[str, list[str]] = defaultdict(list)
        for rayjob in rayjobs:
            made[owner_uid(rayjob) or "?"].append(rayjob["metadata"]["name"])
        landed = []
        for job in jobs:
            name, uid = job["metadata"]["name"], job["metadata"]["uid"]
            unwritten = [r for r in made.get(uid, []) if r != ray_ref(job)]
            if unwritten:
                landed.append(f"submit window: {name} ({unwritten[0]} made, status {phase(job)})")
            elif phase(job) == "Starting" and not ray_ref(job):
                landed.append(f"admitted, not submitted: {name}")
            elif phase(job) in (None, "Pending"):
                landed.append(f"undecided: {name}")
        return landed


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
        "max": round(max(values), 2),
    }


@dataclass
class Chaos:
    """One run: `jobs` jobs of `gpus` a100 GPUs into a namespace of `quota_gpus`, `kills` kills."""

    api: client.ApiClient
    namespace: str
    operator: Operator
    mlflow_uri: str
    jobs: int = 20
    kills: int = 50
    gpus: int = 8
    quota_gpus: int = 8
    seed: int = 0
    backlog: int = 3
    run_seconds: tuple[float, float] = (2.0, 14.0)
    """How long a Ray job runs once KubeRay has its cluster up: long enough that one job at a
    time takes about as long as its share of the kills, so the kills span every lifecycle."""
    startup_timeout: float = 180.0
    trigger_wait: float = 20.0
    settle: float = 300.0
    """Seconds after the last kill's restart for every job to be Succeeded."""
    log: Log = stderr
    timeline: list[str] = field(default_factory=list)
    """After `run`: everything the parts saw and did, in order, one line each."""

    def run(self) -> dict[str, Any]:
        began = time.monotonic()
        ns = Namespace(self.api, self.namespace, began)
        monitor = Monitor(ns, self.quota_gpus)
        applier = Applier(ns, monitor, self.jobs, self.gpus, self.backlog, self.kills)
        driver = Driver(
            ns,
            self.mlflow_uri,
            random.Random(self.seed + 1),
            self.run_seconds,
            # The last job runs on until the last kill, so that every kill falls in a lifecycle.
            hold=lambda: (
                len(killer.kills) < self.kills
                and applier.applied == self.jobs
                and self.jobs - applier.succeeded() <= 1
            ),
        )
        killer = Killer(
            ns,
            self.operator,
            applier,
            random.Random(self.seed),
            self.startup_timeout,
            self.trigger_wait,
            self.log,
        )
        loops: list[Loop] = [monitor, driver, applier]
        monitor.start()  # watching before anything happens
        wait_until(lambda: monitor.samples, 60, "the monitor's first sample")
        try:
            first_start = killer.start()
            driver.start()
            applier.start()
            for _ in range(self.kills):
                killer.kill_once()
            last_kill = time.monotonic()
            deadline = last_kill + self.settle
            while time.monotonic() < deadline:
                if applier.applied == self.jobs and applier.succeeded() == self.jobs:
                    break
                time.sleep(0.2)
            settled = time.monotonic() - last_kill
            time.sleep(0.5)  # the monitor's last samples after the end
        finally:
            for loop in loops:
                if loop.is_alive():
                    loop.stop()
        return self._report(ns, monitor, applier, driver, killer, first_start, began, settled)

    def _report(
        self,
        ns: Namespace,
        monitor: Monitor,
        applier: Applier,
        driver: Driver,
        killer: Killer,
        first_start: float,
        began: float,
        settled: float,
    ) -> dict[str, Any]:
        self.timeline = [f"{at:8.2f}s {who}: {what}" for at, who, what in ns.timeline]
        jobs = ns.trainingjobs()
        final = {j["metadata"]["name"]: j for j in jobs}
        violations = monitor.all_violations()
        for job in jobs:  # at the end, more RayJobs than the attempts the job says it made
            uid, name = job["metadata"]["uid"], job["metadata"]["name"]
            attempts = (job.get("status") or {}).get("attempts", 0)
            made = monitor.rayjob_uids.get(uid, set())
            if len(made) > attempts:
                at = ns.now()
                violations.append(
                    Violation(
                        "duplicate submission",
                        name,
                        at,
                        at,
                        1,
                        f"{len(made)} RayJobs {sorted(monitor.rayjob_names[uid])}, "
                        f"status.attempts {attempts}",
                    )
                )
        lost = [
            f"{name}: {phase(final[name]) if name in final else 'never applied'}"
            for name in applier.names
            if name not in final or phase(final[name]) != "Succeeded"
        ]
        for name in lost:
            job = name.split(":")[0]
            at = ns.now()
            violations.append(Violation("lost job", job, at, at, 1, name))
        for found in violations:
            found.sequence = ns.sequence(found.job, found.first, found.last)
        duplicates = {v.job for v in violations if v.invariant == "duplicate submission"}
        queued = {v.job for v in violations if v.invariant == "running while Queued"}
        # Kills that interrupted each kind of step (one kill may interrupt several jobs').
        landed = Counter(
            kind for kill in killer.kills for kind in {e.split(":")[0] for e in kill.landed}
        )
        triggers = Counter(kill.kind for kill in killer.kills)
        loop_errors = {loop.name: dict(loop.errors) for loop in (monitor, driver, applier)}
        return {
            "jobs": self.jobs,
            "gpus_per_job": self.gpus,
            "quota_gpus": self.quota_gpus,
            "kills": len(killer.kills),
            "seed": self.seed,
            "seconds": round(time.monotonic() - began, 1),
            "seconds_after_last_kill_until_all_succeeded": round(settled, 1),
            "succeeded": sum(phase(j) == "Succeeded" for j in jobs),
            "invariants": {
                "duplicate_submissions": len(duplicates),
                "lost_jobs": len(lost),
                "gpu_seconds_over_quota": round(monitor.gpu_seconds_over, 2),
                "jobs_running_while_queued": len(queued),
            },
            "kills_while_jobs_unfinished": sum(k.unfinished > 0 for k in killer.kills),
            "kill_triggers": dict(triggers),
            "kills_landed_in": dict(landed),
            "operator_start_to_healthy_seconds": summary(
                [first_start, *(k.restart for k in killer.kills)]
            ),
            "uptime_before_kill_seconds": summary([k.uptime for k in killer.kills]),
            "max_gpus_held": monitor.max_gpus_held,
            "monitor": {
                "samples": monitor.samples,
                "max_gap_seconds": round(monitor.max_gap, 2),
            },
            "loop_errors": {name: errors for name, errors in loop_errors.items() if errors},
            "loop_first_errors": {
                loop.name: loop.first_errors
                for loop in (monitor, driver, applier)
                if loop.first_errors
            },
            "violations": [asdict(v) for v in violations],
            "kill_log": [asdict(k) for k in killer.kills],
        }


def violated(report: dict[str, Any]) -> bool:
    """Whether any of the four invariants failed."""
    return any(report["invariants"].values())


def timeline_of(report: dict[str, Any]) -> str:
    """The violations with what led to each, as a reader wants them in a failure message."""
    lines = []
    for found in report["violations"]:
        lines.append(
            f"{found['invariant']} — {found['job']}, {found['first']:.2f}-{found['last']:.2f}s "
            f"({found['samples']} samples): {found['detail']}"
        )
        lines += [f"    {entry}" for entry in found["sequence"]]
    return "\n".join(lines)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)
    return result


def delete_jobs(api: client.ApiClient, namespace: str, timeout: float = 60) -> None:
    """Delete the run's jobs while an operator runs to release their finalizers."""
    objects = client.CustomObjectsApi(api)
    try:
        objects.delete_collection_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingjobs"
        )
    except ApiException as error:
        if error.status != 404:
            raise
    wait_until(
        lambda: (
            not objects.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs")[
                "items"
            ]
        ),
        timeout,
        f"the jobs in {namespace} deleted",
    )
