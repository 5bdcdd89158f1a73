"""`mlplane cluster up|down|status|kubeconfig|build`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mlplane.operator.cluster.build import HELM, KUBERAY, BuildError, ensure_parts, ensure_tool
from mlplane.operator.cluster.controlplane import ControlPlane, ControlPlaneError

app = typer.Typer(
    help="The local Kubernetes control plane with simulated GPU node pools.",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="MLPLANE_CLUSTER_DIR",
        help="Where pids, logs, certificates and the kubeconfig live "
        "[default: ~/.cache/mlplane/cluster].",
    ),
]
PoolsFile = Annotated[
    Path | None,
    typer.Option(
        "--nodepools",
        exists=True,
        dir_okay=False,
        help="Node-pool YAML [default: the a100/t4/cpu pools shipped with mlplane].",
    ),
]


def _echo(message: str) -> None:
    typer.echo(message, err=True)


@app.command()
def build() -> None:
    """Build the Go parts, KubeRay's operator and helm into the cache (once per machine; later
    runs build nothing).

    Prints the directories of the binaries as a PATH list: `export PATH=$(mlplane cluster
    build):$PATH` puts kubectl and helm on the PATH."""
    try:
        parts = ensure_parts(_echo)
        tools = {tool.name: ensure_tool(tool, _echo) for tool in (KUBERAY, HELM)}
    except BuildError as error:
        _echo(str(error))
        raise typer.Exit(1) from error
    built = [*parts.built, *(name for name, (_, fresh) in tools.items() if fresh)]
    helm = tools[HELM.name][0]
    _echo(f"built {', '.join(built)}" if built else "cached: built nothing")
    typer.echo(os.pathsep.join([str(parts.bin_dir), str(helm.parent)]))


@app.command()
def up(
    state_dir: StateDir = None,
    nodepools: PoolsFile = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for ready.")] = 120.0,
) -> None:
    """Start etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and KubeRay's
    operator on loopback."""
    plane = ControlPlane(state_dir)
    try:
        plane.up(_echo, timeout=timeout, pools_file=nodepools)
    except (BuildError, ControlPlaneError) as error:
        _echo(str(error))
        raise typer.Exit(1) from error
    typer.echo(plane.kubeconfig)


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop every process `up` started; leaves the logs for a post-mortem."""
    ControlPlane(state_dir).down(_echo)


@app.command()
def status(state_dir: StateDir = None) -> None:
    """Show each component's pid, health and memory and the fake nodes; exit 1 unless ready."""
    plane = ControlPlane(state_dir)
    current = plane.status()
    for component in current.components:
        health = "healthy" if component.healthy else ("running" if component.alive else "stopped")
        typer.echo(
            f"{component.name:<24} pid {component.pid or '-':<8} {health:<8} "
            f"{component.rss_bytes / 2**20:6.0f} MiB"
        )
    typer.echo(f"nodes ready {current.nodes_ready}/{current.nodes_total}")
    typer.echo(f"total RSS {current.rss_bytes / 2**20:.0f} MiB")
    typer.echo(f"kubeconfig {plane.kubeconfig}")
    typer.echo("ready" if current.ready else "not ready")
    if not current.ready:
        raise typer.Exit(1)


@app.command()
def kubeconfig(state_dir: StateDir = None) -> None:
    """Print the admin kubeconfig's path: `export KUBECONFIG=$(mlplane cluster kubeconfig)`."""
    path = ControlPlane(state_dir).kubeconfig
    if not path.is_file():
        _echo("no local cluster: run `mlplane cluster up` first")
        raise typer.Exit(1)
    typer.echo(path)
