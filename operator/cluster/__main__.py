"""`python -m mlplane.operator.cluster`: the cluster commands without the full `mlplane` CLI."""

from mlplane.operator.cluster.cli import app

app(prog_name="mlplane cluster")
