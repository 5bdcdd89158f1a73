"""Backends turn a resource into execution on Ray (or SageMaker) and report its state."""
