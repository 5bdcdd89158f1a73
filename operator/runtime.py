"""The operator's parts, assembled once from its configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlplane.operator import embedded
from mlplane.operator.admission import Admission, AdmitAll
from mlplane.operator.backends.ray import RayJobsBackend
from mlplane.operator.backends.serve import ServeRestBackend
from mlplane.operator.config import OperatorConfig
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelDeploymentReconciler
from mlplane.operator.tracking import MetricsFeed, Tracking
from mlplane.operator.trainingjob import TrainingJobReconciler
from mlplane.operator.tuningsweep import TuningSweepReconciler

# The model URI a TrainingJob registered, by (namespace, name): for spec.model.trainingJobRef.
JobModels = Callable[[str, str], str | None]


@dataclass
class Runtime:
    """Backends, MLflow and admission shared by every reconciler."""

    config: OperatorConfig
    tracking: Tracking
    feed: MetricsFeed
    admission: Admission
    training: TrainingJobReconciler
    tuning: TuningSweepReconciler
    serving: ModelDeploymentReconciler

    @classmethod
    def start(
        cls, config: OperatorConfig, job_models: JobModels = lambda ns, name: None
    ) -> Runtime:
        """Connect to Ray and MLflow, starting local ones where none is configured."""
        ray_address = config.ray_address or embedded.start_local_ray(
            config.data_dir / "ray", num_cpus=config.local_ray_cpus
        )
        mlflow_uri = config.mlflow_tracking_uri or embedded.start_local_mlflow(
            config.data_dir / "mlflow"
        )
        tracking = Tracking(mlflow_uri)
        feed = MetricsFeed(tracking, max_age_seconds=config.observe_interval_seconds)
        admission = AdmitAll()
        backend = RayJobsBackend(ray_address)
        parts = (config, backend, tracking, feed, admission)
        return cls(
            config=config,
            tracking=tracking,
            feed=feed,
            admission=admission,
            training=TrainingJobReconciler(*parts),
            tuning=TuningSweepReconciler(*parts),
            serving=ModelDeploymentReconciler(
                ServeRestBackend(ray_address, http_port=config.serve_http_port),
                MlflowModelResolver(mlflow_uri),
                job_models=job_models,
                env={"MLFLOW_TRACKING_URI": mlflow_uri},
            ),
        )
