"""The operator SIGKILLed at random points over many GPU job lifecycles: is anything lost,
submitted twice, run over quota or run while it says Queued?

    .venv/bin/python bench/operator_kills.py [--jobs 20] [--kills 50] [--seed 0]
                                             [--gpus 8] [--quota 8] [--workdir DIR]

A local control plane of its own (`~/.cache/mlplane/bench-kills`, started here unless one runs
there) with KubeRay's operator and kwok pools: an a100 node of 8 GPUs for every job (KubeRay keeps
a finished job's cluster, and so its GPUs, for ttlSecondsAfterFinished = 10 min) and 4 cpu nodes
for the heads and submitters. A local MLflow server; `mlplane operator` with the kuberay backend,
1 s observe interval, its namespace's a100 quota `--quota` GPUs: with the defaults it admits
exactly one 8-GPU job at a time, and the jobs behind it wait Queued across the kills.

`--jobs` TrainingJobs of `--gpus` a100 GPUs are applied in order, each once fewer than three are
unfinished and the kills have caught up with its share of them. kwok pods run no code, so what each
Ray job would do is done here: once KubeRay has a RayJob Running it reports RUNNING, and 2-14 s
later records the job's MLflow run and reports SUCCEEDED (the last job not before the last kill,
so that every kill falls in a job's lifecycle). Meanwhile the operator's process group is
SIGKILLed `--kills` times, each at a seeded point: 0.3-5 s after it came back healthy, within 0.3 s
of a job's create call (the admission step), within 0.3 s of a RayJob appearing (the submit window
before the job's status names it), or as a job shows Starting with no RayJob yet; it is restarted
at once each time. A monitor reads the namespace every ~0.1 s for the whole run. See
tests/e2e/operator_chaos.py for the parts and exactly what each invariant counts.

Printed (JSON): the four invariants (duplicate submissions, lost jobs, GPU-seconds over quota,
jobs running while Queued) and every violation with the sequence of events around it, the kinds
of kill and what each interrupted, the operator's restart times, and the monitor's coverage. The
exit status is 1 if any invariant failed. `--workdir` keeps the operator's log (every start
marked), the full report with each kill, and the run's timeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from queue_admission import in_workdir, mlplane_api

from mlplane.operator import embedded
from mlplane.operator.cluster import nodepools
from mlplane.operator.cluster.build import cache_root
from mlplane.operator.cluster.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
# The parts the end-to-end test shares; appended after the standard library, so the repo's own
# operator/ directory shadows no module. Imported after this line, hence E402.
sys.path.append(str(ROOT))
from tests.e2e.operator_chaos import (  # noqa: E402
    Chaos,
    Operator,
    delete_jobs,
    operator_config,
    timeline_of,
    violated,
)


def pools_file(workdir: Path, jobs: int, gpus: int) -> Path:
    """The shipped a100 and cpu pools, with a100 nodes enough for every job's GPUs at once."""
    a100 = -(-jobs * gpus // 8) + 1
    nodes = {"a100": a100, "cpu": 4}
    pools = yaml.safe_load(Path(nodepools.__file__).with_name("nodepools.yaml").read_text())
    pools["pools"] = [
        pool | {"nodes": nodes[pool["name"]]} for pool in pools["pools"] if pool["name"] in nodes
    ]
    path = workdir / "nodepools.yaml"
    path.write_text(yaml.safe_dump(pools))
    return path


def measure(args: argparse.Namespace, workdir: Path, plane: ControlPlane) -> dict[str, Any]:
    api = mlplane_api(plane)
    namespace = f"bench-kills-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    mlflow_uri = embedded.start_local_mlflow(workdir / "mlflow")
    config = operator_config(namespace, mlflow_uri, workdir, workdir / "nodepools.yaml", args.quota)
    operator = Operator(workdir, plane.kubeconfig, config, namespace)
    try:
        chaos = Chaos(
            api,
            namespace,
            operator,
            mlflow_uri,
            jobs=args.jobs,
            kills=args.kills,
            gpus=args.gpus,
            quota_gpus=args.quota,
            seed=args.seed,
            settle=args.settle,
        )
        report = chaos.run()
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
        (workdir / "timeline.txt").write_text("\n".join(chaos.timeline) + "\n")
        delete_jobs(api, namespace)  # the operator, still running, lets go of their finalizers
    finally:
        operator.stop()
        embedded.stop(mlflow_uri)
    core.delete_namespace(namespace)
    return report


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    plane = ControlPlane(cache_root() / "bench-kills")
    log = lambda message: print(f"[cluster] {message}", file=sys.stderr)  # noqa: E731
    up = plane.up(log, pools_file=pools_file(workdir, args.jobs, args.gpus))
    try:
        return measure(args, workdir, plane)
    finally:
        if not up.already_running:
            plane.down(log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="TrainingJobs, applied in order")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the operator")
    parser.add_argument("--seed", type=int, default=0, help="the kill plan and run times")
    parser.add_argument("--gpus", type=int, default=8, help="a100 GPUs per job (at most 8)")
    parser.add_argument("--quota", type=int, default=8, help="the namespace's a100 GPU quota")
    parser.add_argument(
        "--settle", type=float, default=300.0, help="s after the last kill for all to Succeed"
    )
    parser.add_argument("--workdir", type=Path, help="keep the log, report and timeline here")
    args = parser.parse_args()
    report = in_workdir(args.workdir, lambda workdir: bench(args, workdir))
    shown = {k: v for k, v in report.items() if k not in ("kill_log", "loop_first_errors")}
    print(json.dumps(shown, indent=2))
    if violated(report):
        print(timeline_of(report), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
