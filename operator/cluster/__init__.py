"""The local real Kubernetes control plane: built once from Go modules, started on loopback."""
