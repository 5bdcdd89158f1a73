"""What `mlplane run` costs over a plain Ray Train script and a plain single-process script.

    .venv/bin/python bench/training_overhead.py [--repeats 3] [--workload NAME ...]

Each workload is one TrainingJob YAML, run three ways on the same data with the same settings
(bench/baselines.py holds the two baselines): `mlplane run FILE`, the plain Ray Train script
submitted with `ray job submit`, and the plain script in one process. Both Ray variants use one
local Ray head and MLflow server started here first, so every timing is one command a user types
against a running cluster, from start to exit: imports, data, training, evaluation (and for
mlplane tracking, model logging and registration). One plain Ray Train run warms the head first,
and runs are interleaved, each repeat starting with the next variant, so neither Ray Train's
one-time set-up nor drift in the machine's load favours a variant; the table reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from sklearn.datasets import make_classification

from mlplane.operator import embedded

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BASELINES = ROOT / "bench" / "baselines.py"
VARIANTS = ("mlplane", "ray-train", "single")


@dataclass(frozen=True)
class Workload:
    """An example manifest, optionally on synthetic data of the given shape with other settings."""

    example: str
    rows: int = 0
    """0: the example's own dataset; else make_classification rows (40 features)."""
    spec: dict[str, Any] = field(default_factory=dict)
    """Replaces these top-level spec fields (None removes one)."""


WORKLOADS = {
    "xgboost-breast-cancer": Workload("trainingjob-xgboost.yaml"),
    "torch-digits": Workload("trainingjob-torch.yaml"),
    "xgboost-200k": Workload(
        "trainingjob-xgboost.yaml",
        rows=200_000,
        spec={
            "hyperparameters": {"eta": 0.1, "max_depth": 6, "num_boost_round": 300},
            "earlyStopping": None,
            "checkpoint": {"every": 25, "keep": 2},
            "gates": None,
        },
    ),
    "torch-100k": Workload(
        "trainingjob-torch.yaml",
        rows=100_000,
        spec={
            "hyperparameters": {"lr": 0.003, "epochs": 10, "batch_size": 256},
            "earlyStopping": None,
            "checkpoint": {"every": 2, "keep": 2},
            "gates": None,
        },
    ),
}


def manifest(workload: Workload, directory: Path) -> Path:
    """The workload's TrainingJob YAML, with its synthetic dataset written next to it."""
    document = yaml.safe_load((ROOT / "examples" / workload.example).read_text())
    spec = document["spec"]
    for key, value in workload.spec.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    if workload.rows:
        x, y = make_classification(
            n_samples=workload.rows, n_features=40, n_informative=20, random_state=0
        )
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(target=y)
        data = directory / f"{workload.rows}.parquet"
        frame.to_parquet(data)
        spec["dataset"]["uri"] = f"file://{data}"
    path = directory / f"{document['metadata']['name']}-{workload.rows}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def mlplane_metrics(stdout: str) -> dict[str, float]:
    """The test metrics from the status YAML `mlplane run` prints last."""
    printed = re.search(r"^status:$", stdout, re.MULTILINE)
    if printed is None:
        raise RuntimeError(f"no status in the output of mlplane run:\n{stdout[-3000:]}")
    status = yaml.safe_load(stdout[printed.start() :])["status"]
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"mlplane run ended {status['phase']}: {status.get('conditions')}")
    return {
        key.removeprefix("test_"): value
        for key, value in status["metrics"].items()
        if key in ("test_accuracy", "test_roc_auc")
    }


def baseline_metrics(stdout: str) -> dict[str, float]:
    line = next(line for line in reversed(stdout.splitlines()) if "BENCH_RESULT " in line)
    return json.loads(line.split("BENCH_RESULT ", 1)[1])


@dataclass
class Services:
    ray: str
    mlflow: str
    data_dir: Path

    def command(self, variant: str, path: Path) -> tuple[list[str], Callable[[str], Any]]:
        """The command line a user would type for this variant, and how to read its metrics."""
        if variant == "mlplane":
            return [str(BIN / "mlplane"), "run", str(path)], mlplane_metrics
        if variant == "ray-train":
            # The same Train setting the mlplane runner's jobs get.
            runtime_env = {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}
            return [
                str(BIN / "ray"), "job", "submit", "--address", self.ray,
                "--runtime-env-json", json.dumps(runtime_env), "--",
                sys.executable, str(BASELINES), "ray-train", str(path),
            ], baseline_metrics  # fmt: skip
        return [sys.executable, str(BASELINES), "single", str(path)], baseline_metrics

    def run(self, variant: str, path: Path) -> tuple[float, dict[str, float]]:
        argv, read_metrics = self.command(variant, path)
        env = {
            **os.environ,
            "MLPLANE_RAY_ADDRESS": self.ray,
            "MLPLANE_MLFLOW_TRACKING_URI": self.mlflow,
            "MLPLANE_DATA_DIR": str(self.data_dir),
            "RAY_AUTH_MODE": "disabled",
        }
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return seconds, read_metrics(done.stdout)


def table(results: dict[str, dict[str, list[tuple[float, dict[str, float]]]]]) -> str:
    """Markdown: median seconds per variant, mlplane's overhead, and the test metrics."""
    lines = [
        "| workload | mlplane run (s) | plain Ray Train (s) | single process (s) "
        "| mlplane / Ray Train | overhead | test metric (mlplane / Ray Train / single) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_variant in results.items():
        median = {v: statistics.median(s for s, _ in by_variant[v]) for v in VARIANTS}
        metric = "roc_auc" if "roc_auc" in by_variant["single"][0][1] else "accuracy"
        values = " / ".join(f"{by_variant[v][-1][1][metric]:.4f}" for v in VARIANTS)
        ratio = median["mlplane"] / median["ray-train"]
        lines.append(
            f"| {name} | {median['mlplane']:.1f} | {median['ray-train']:.1f} "
            f"| {median['single']:.1f} | {ratio:.2f} | {ratio - 1:+.0%} | {metric} {values} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    args = parser.parse_args()
    names = args.workload or list(WORKLOADS)

    with tempfile.TemporaryDirectory(prefix="mlplane-bench-") as scratch:
        directory = Path(scratch)
        services = Services(
            ray=embedded.start_local_ray(directory / "ray", num_cpus=4),
            mlflow=embedded.start_local_mlflow(directory / "mlflow"),
            data_dir=directory / "mlplane",
        )
        # The first Ray Train run on a fresh head creates Train's autoscaling coordinator (and
        # waits out its 5 s request once): whichever variant came first would pay for it.
        services.run("ray-train", manifest(WORKLOADS["xgboost-breast-cancer"], directory))
        results: dict[str, dict[str, list[tuple[float, dict[str, float]]]]] = {}
        for name in names:
            path = manifest(WORKLOADS[name], directory)
            results[name] = {variant: [] for variant in VARIANTS}
            for repeat in range(args.repeats):
                # Each repeat starts with the next variant, so none always runs on a cooler machine.
                for variant in VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]:
                    seconds, metrics = services.run(variant, path)
                    results[name][variant].append((seconds, metrics))
                    load = os.getloadavg()[0]
                    print(
                        f"{name} #{repeat + 1} {variant}: {seconds:.1f} s {metrics} "
                        f"(load average {load:.1f})",
                        flush=True,
                    )
        embedded.stop_all()
    print(table(results))


if __name__ == "__main__":
    main()
