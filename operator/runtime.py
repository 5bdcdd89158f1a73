"""The operator's parts, assembled once from its configuration."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client

from mlplane.operator import embedded
from mlplane.operator.admission import Admission, AdmitAll
from mlplane.operator.backends.aws import SecretReader, no_secrets
from mlplane.operator.backends.base import TrainingBackend
from mlplane.operator.backends.kuberay import (
    RAY_POOL_LABEL,
    ClusterProblems,
    KubeRayBackend,
    ObservedRayJobs,
    placements,
    unobserved,
)
from mlplane.operator.backends.rayservice import RayServiceBackend
from mlplane.operator.backends.sagemaker import SageMakerEndpoints
from mlplane.operator.backends.serve import ServeRestBackend, ServingBackend
from mlplane.operator.config import OperatorConfig
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelDeploymentReconciler
from mlplane.operator.quota import (
    GpuLedger,
    GpuQuotas,
    Observed,
    ResourceQuotaGpus,
    config_limits,
)
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
        cls,
        config: OperatorConfig,
        job_models: JobModels = lambda ns, name: None,
        kube: client.ApiClient | None = None,
        observed_runs: Callable[[], Observed] | None = None,
        observed_rayjobs: ObservedRayJobs = unobserved,
        cluster_problems: ClusterProblems = unobserved,
        secrets: SecretReader = no_secrets,
        gpu_quotas: GpuQuotas = lambda namespace: None,
    ) -> Runtime:
        """Connect to Ray (or KubeRay) and MLflow, starting local ones where none is configured.

        With `kube` (the operator), work is admitted by the GPU ledger, rebuilt from
        `observed_runs` before its first decision, and custom code must be a remote archive;
        without (`mlplane run`), all work starts and `runtimeEnv` may name local paths.
        `observed_rayjobs` and `cluster_problems` are the operator's watches of RayJobs and Ray
        pods (kuberay backend).
        `gpu_quotas` is the operator's watch of GPUQuotas, which the ledger reads on every
        decision. `secrets` reads the Secrets SageMaker deployments name for their AWS
        credentials, and those a job names for its environment (`runtimeEnv.envFrom`, ray
        backend).
        """
        mlflow_uri = config.mlflow_tracking_uri or embedded.start_local_mlflow(
            config.data_dir / "mlflow"
        )
        tracking = Tracking(mlflow_uri)
        feed = MetricsFeed(tracking, max_age_seconds=config.observe_interval_seconds)
        admission: Admission = AdmitAll()
        if kube is not None:
            quota = ResourceQuotaGpus(kube, max_age_seconds=config.observe_interval_seconds)
            limits = config_limits(config, quota, gpu_quotas)
            admission = GpuLedger(limits, observed=observed_runs)
        backend: TrainingBackend
        serving: ServingBackend
        if config.backend == "kuberay":
            if kube is None:
                raise ValueError("the kuberay backend needs a Kubernetes API client")
            placement = placements(config)
            backend = KubeRayBackend(kube, placement, observed_rayjobs, cluster_problems)
            serving = RayServiceBackend(
                kube,
                placement,
                cluster_problems,
                through_api_server=config.through_kubernetes_proxy,
            )
        else:
            # Imported here: Ray's client adds 35 MiB to an operator that launches through KubeRay.
            from mlplane.operator.backends.ray import RayJobsBackend

            ray_address = config.ray_address or embedded.start_local_ray(
                config.data_dir / "ray",
                num_cpus=config.local_ray_cpus,
                # `mlplane run` is the user's own run on their own machine: their credentials
                # reach the job as they would reach a script. The operator's never do.
                env=os.environ if kube is None else None,
            )
            backend = RayJobsBackend(ray_address, secrets=secrets)
            serving = ServeRestBackend(ray_address, http_port=config.serve_http_port)
        parts = (config, backend, tracking, feed, admission)
        # Without Kubernetes this is `mlplane run`, on the user's own machine and code.
        local_code = kube is None
        return cls(
            config=config,
            tracking=tracking,
            feed=feed,
            admission=admission,
            training=TrainingJobReconciler(*parts, local_code=local_code),
            tuning=TuningSweepReconciler(*parts, local_code=local_code),
            serving=ModelDeploymentReconciler(
                serving,
                MlflowModelResolver(mlflow_uri),
                job_models=job_models,
                env={"MLFLOW_TRACKING_URI": mlflow_uri},
                # Replicas select their pool by the Ray node label KubeRay workers carry.
                node_pool_label=RAY_POOL_LABEL if config.backend == "kuberay" else None,
                sagemaker=SageMakerEndpoints(
                    mlflow_uri,
                    secrets,
                    artifact_bucket=config.sagemaker_artifact_bucket,
                    allowed_endpoint_urls=config.sagemaker_endpoint_urls,
                ),
            ),
        )
