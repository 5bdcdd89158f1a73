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
