"""The `mlplane` command line: validate manifests, print CRDs, run the operator or a local cluster.

Heavy imports (Ray, kopf, MLflow) happen inside the commands that need them, so `mlplane validate`
answers in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlplane.operator.cluster.cli import app as cluster_app

app = typer.Typer(
    help="mlplane: train, tune and serve models on Ray from Kubernetes resources.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(cluster_app, name="cluster")


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
    path: Annotated[Path, typer.Argument(help="A TrainingJob manifest.", exists=True)],
) -> None:
    """Run a manifest locally on the embedded default (local Ray, local MLflow), no cluster."""
    from rich.console import Console

    from mlplane.crds.validation import validate_files
    from mlplane.operator.config import OperatorConfig
    from mlplane.operator.run import run_file, status_yaml

    problems = validate_files([path])
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise typer.Exit(1)
    job = run_file(path, OperatorConfig.load(), Console())
    typer.echo(status_yaml(job))
    if job.status is None or job.status.phase != "Succeeded":
        raise typer.Exit(1)


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
) -> None:
    """Run the operator against the cluster in KUBECONFIG (or in-cluster)."""
    import asyncio

    import kopf

    from mlplane.operator.config import OperatorConfig
    from mlplane.operator.handlers import build_registry

    settings = OperatorConfig.load(config)
    registry = build_registry(settings)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespace,
            namespaces=namespace or (),
            liveness_endpoint=liveness,
        )
    )
