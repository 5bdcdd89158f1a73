"""What the SageMaker integration and end-to-end tests share: the example as applied, a model in
the session's MLflow server, the credentials of the example's Secret, and moto's view of what a
deployment left behind."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import yaml
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends import sagemaker_render as render
from mlplane.operator.backends.aws import AwsClients

EXAMPLE = Path(__file__).parents[1] / "examples" / "modeldeployment-sagemaker.yaml"
REGION = "eu-west-1"
BUCKET = "mlplane-models"
# What the example's Secret aws-credentials holds: values that must never surface anywhere.
SECRET = {
    "aws_access_key_id": "AKIAMLPLANEMOTO00042",
    "aws_secret_access_key": "mlplane-moto-secret-key-do-not-print",
    "aws_session_token": "mlplane-moto-session-token-do-not-print",
}


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def register_model(tracking_uri: str) -> str:
    """A small sklearn model registered in MLflow, as `models:/<name>/<version>`."""
    mlflow.set_tracking_uri(tracking_uri)
    features, target = load_iris(return_X_y=True, as_frame=True)
    name = f"churn-sm-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression(max_iter=300).fit(features, target),
            name="model",
            pip_requirements=["scikit-learn"],
            registered_model_name=name,
        )
    return f"models:/{name}/{info.registered_model_version}"


def create_bucket(aws: AwsClients) -> None:
    existing = {b["Name"] for b in aws.s3.list_buckets()["Buckets"]}
    if BUCKET not in existing:
        aws.s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )


def left_in_moto(aws: AwsClients, md: ModelDeployment) -> dict[str, list[str]]:
    """Everything of this deployment that exists in moto, by kind. The names are filtered here
    too: moto's ListModels ignores NameContains, and other tests' deployments share the server."""
    base = render.names(md).base
    sm = aws.sagemaker
    objects = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=render.artifact_prefix(md))
    endpoints = sm.list_endpoints(NameContains=base)["Endpoints"]
    configs = sm.list_endpoint_configs(NameContains=base)["EndpointConfigs"]
    models = sm.list_models(NameContains=base)["Models"]
    return {
        "endpoints": [e["EndpointName"] for e in endpoints if base in e["EndpointName"]],
        "configs": [c["EndpointConfigName"] for c in configs if base in c["EndpointConfigName"]],
        "models": [m["ModelName"] for m in models if base in m["ModelName"]],
        "artifacts": [o["Key"] for o in objects.get("Contents", [])],
    }
