"""The mlplane API: Pydantic models for the three kinds, and the CRDs generated from them."""

from mlplane.crds.definitions import KINDS, Kind, crd
from mlplane.crds.modeldeployment import ModelDeployment, ModelDeploymentSpec
from mlplane.crds.trainingjob import TrainingJob, TrainingJobSpec
from mlplane.crds.tuningsweep import TuningSweep, TuningSweepSpec

__all__ = [
    "KINDS",
    "Kind",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "TrainingJob",
    "TrainingJobSpec",
    "TuningSweep",
    "TuningSweepSpec",
    "crd",
]
