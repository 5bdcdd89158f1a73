"""The `mlplane` command line: validate manifests, print CRDs, package code, run the operator or a
local cluster.

Heavy imports (Ray, kopf, MLflow) happen inside the commands that need them, so `mlplane validate`
answers in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlplane.operator.cluster.cli import app as cluster_app

if TYPE_CHECKING:
    from mlplane.operator.config import OperatorConfig

app = typer.Typer(
    help="mlplane: train, tune and serve models on Ray from Kubernetes resources.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(cluster_app, name="cluster")


def _load_config(path: Path | None) -> OperatorConfig:
    """The operator's configuration; a refused one ends the command, naming each setting."""
    from pydantic import ValidationError

    from mlplane.operator.config import OperatorConfig

    try:
        return OperatorConfig.load(path)
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            typer.echo(f"{path or 'MLPLANE_*'}: {f'{where}: ' if where else ''}{message}", err=True)
        raise typer.Exit(2) from None


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or directories.")],
) -> None:
    """Check manifests against the API; print `file: kind/name: field: message` per problem."""
    from mlplane.crds.validation import manifest_files, validate_files

    missing = [p for p in paths if not p.exists()]
    for path in missing:
        typer.echo(f"{path}: no such file or directory", err=True)
    problems = validate_files(p for p in paths if p.exists())
    for problem in problems:
        typer.echo(str(problem))
    if problems or missing:
        raise typer.Exit(1)
    count = sum(1 for _ in manifest_files(paths))
    typer.echo(f"{count} file(s) valid")


@app.command()
def crds() -> None:
    """Print the CustomResourceDefinitions (pipe into `kubectl apply -f -`)."""
    from mlplane.crds.generate import all_crds_yaml

    typer.echo(all_crds_yaml(), nl=False)


@app.command()
def run(
    path: Annotated[
        Path,
        typer.Argument(help="A TrainingJob, TuningSweep or ModelDeployment manifest.", exists=True),
    ],
) -> None:
    """Run a manifest locally on the embedded default (local Ray, local MLflow), no cluster.

    Runs end on their own; a ModelDeployment serves until Ctrl-C, which removes it.
    """
    from rich.console import Console

    from mlplane.crds.validation import validate_files
    from mlplane.operator.run import run_file, status_yaml

    problems = validate_files([path])
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise typer.Exit(1)
    resource, kind = run_file(path, _load_config(None), Console())
    typer.echo(status_yaml(resource))
    if not kind.succeeded(resource.status.phase if resource.status else None):
        raise typer.Exit(1)


@app.command()
def package(
    path: Annotated[
        Path, typer.Argument(help="A TrainingJob or TuningSweep manifest.", exists=True)
    ],
    to: Annotated[
        str,
        typer.Option(
            envvar="MLPLANE_CODE_STORAGE",
            help="s3://bucket/prefix the code archives go to (every Ray pod must read it).",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Upload the local workingDir and pyModules a manifest names; print it with their URIs.

    Ray pods on a cluster cannot read your disk, so there code is a remote archive:
    `mlplane package job.yaml --to s3://bucket/code | kubectl apply -f -`. Relative paths are
    taken from the current directory; S3 credentials and endpoint are boto3's own.
    """
    from mlplane.operator.code_package import Destination, PackageError, Packager, s3_upload

    try:
        destination = Destination.parse(to)
    except PackageError as error:
        raise typer.BadParameter(str(error), param_hint="--to") from None
    try:
        packager = Packager(destination, s3_upload(destination.bucket), Path.cwd())
        manifest = packager.file(path)
    except PackageError as error:
        typer.echo(f"{path}: {error}", err=True)
        raise typer.Exit(1) from None
    if output:
        output.write_text(manifest)
    else:
        typer.echo(manifest, nl=False)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch only these namespaces.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Operator configuration YAML.")] = None,
    liveness: Annotated[
        str | None,
        typer.Option(help="Serve kopf's health endpoint, e.g. http://0.0.0.0:8080/healthz"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(envvar="MLPLANE_METRICS_PORT", help="Serve Prometheus metrics on this port."),
    ] = None,
    peering: Annotated[
        str | None,
        typer.Option(
            help="The kopf peering object replicas coordinate through (ClusterKopfPeering, or "
            "KopfPeering in each namespace with --namespace); one replica works, the rest wait."
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            help="Peering priority: the highest live replica works (default: the oldest)."
        ),
    ] = None,
    json_logs: Annotated[bool, typer.Option(help="Log one JSON object per line.")] = False,
) -> None:
    """Run the operator against the cluster in KUBECONFIG (or in-cluster)."""
    import asyncio
    import logging
    import time

    import kopf

    from mlplane.operator.handlers import build_registry
    from mlplane.operator.metrics import OperatorMetrics

    kopf.configure(log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL)
    # kopf logs every handler run per object at INFO ("Timer ... succeeded." each interval), and
    # aiohttp every probe of /healthz; the Events on each phase change say what happened.
    for chatty in ("kopf.objects", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = _load_config(config)
    metrics = OperatorMetrics()
    if metrics_port is not None:
        metrics.serve(metrics_port)
    if peering and priority is None:
        # Replicas of equal priority all pause (kopf cannot tell which should work): started
        # later means lower, so the oldest live replica works and a new one waits as a standby.
        priority = -time.time_ns() // 1_000_000
    asyncio.run(
        kopf.operator(
            registry=build_registry(settings, metrics),
            standalone=peering is None,
            peering_name=peering,
            priority=priority,
            clusterwide=not namespace,
            namespaces=namespace or (),
            liveness_endpoint=liveness,
        )
    )


@app.command()
def queue(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace (default: all).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Show it again every --interval seconds.")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between views.")] = 2.0,
) -> None:
    """Node pools, GPU quotas and the runs waiting for GPUs, with their reasons and positions.

    Read from the cluster in KUBECONFIG: who holds each pool's GPUs, each GPUQuota's use, and
    the queue in line order. With --watch on a terminal it redraws in place; piped, it prints
    each view in turn.
    """
    import sys
    import time

    from kubernetes import client
    from kubernetes.config import ConfigException
    from rich.console import Console, RenderableType
    from rich.live import Live
    from urllib3.exceptions import HTTPError

    from mlplane.operator.kube_client import connect
    from mlplane.operator.queue_view import read, render

    try:
        api = connect()
    except ConfigException as error:
        typer.echo(f"mlplane queue: no cluster: {error}", err=True)
        raise typer.Exit(1) from None
    # Piped, a table keeps its rows whole (kubectl does not wrap either).
    console = Console() if sys.stdout.isatty() else Console(width=500)

    def view() -> RenderableType:
        try:
            return render(read(api, namespace))
        except client.ApiException as error:
            typer.echo(f"mlplane queue: {error.status} {error.reason}: {error.body}", err=True)
        except HTTPError as error:
            typer.echo(f"mlplane queue: {api.configuration.host}: {error}", err=True)
        raise typer.Exit(1)

    def show(renderable: RenderableType) -> None:
        if console.is_terminal:
            console.print(renderable)
            return
        with console.capture() as captured:  # piped: no padding after the last column
            console.print(renderable)
        typer.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))

    if not watch:
        show(view())
        return
    if not console.is_terminal:
        while True:
            show(view())
            time.sleep(interval)
    with Live(view(), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(view(), refresh=True)
