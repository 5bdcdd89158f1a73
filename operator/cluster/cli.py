"""`mlplane cluster up|down|status|kubeconfig`."""

import typer

app = typer.Typer(help="The local Kubernetes control plane with simulated GPU node pools.")
