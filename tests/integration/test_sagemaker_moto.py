"""ModelDeployment `target: sagemaker` against a real moto server over HTTP (S3 and SageMaker).

The object applied is examples/modeldeployment-sagemaker.yaml as written: its trainingJobRef
resolves to a model registered in the session's real MLflow server, its credentialsSecret to
credentials moto accepts. The reconciler is driven as the operator's timer drives it; the
packaging downloads the model from MLflow and uploads model.tar.gz to moto's S3. moto creates
endpoints InService at once; the transitions it cannot show are in
tests/unit/test_sagemaker_transitions.py.
"""

import io
import logging
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import pytest
import yaml
from sagemaker_support import (
    BUCKET,
    REGION,
    SECRET,
    create_bucket,
    example,
    left_in_moto,
    register_model,
)
from service_fixtures import MotoServer

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends import sagemaker_render as render
from mlplane.operator.backends.aws import AwsClients, AwsCredentials, boto3_clients
from mlplane.operator.backends.sagemaker import SageMakerEndpoints
from mlplane.operator.modeldeployment import MlflowModelResolver, ModelDeploymentReconciler
from mlplane.operator.status import condition

pytestmark = [pytest.mark.mlflow]


@pytest.fixture(scope="module")
def registered(mlflow_server: str) -> str:
    return register_model(mlflow_server)


@pytest.fixture(scope="module")
def aws(moto_server: MotoServer) -> AwsClients:
    """The test's own view of moto (as the AWS console would be), with the artifact bucket."""
    clients = boto3_clients(REGION, moto_server.endpoint_url, AwsCredentials("test", "test"))
    create_bucket(clients)
    return clients


@dataclass
class Operator:
    """The operator's ModelDeployment reconciler with the SageMaker target at moto."""

    reconciler: ModelDeploymentReconciler
    calls: list[str]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def step(self, md: ModelDeployment) -> ModelDeployment:
        result = self.reconciler.reconcile(md)
        self.events += [(e.type, e.reason, e.message) for e in result.events]
        self.statuses.append(yaml.safe_dump(result.status.to_dict()))
        return md.model_copy(update={"status": result.status})


@pytest.fixture
def start_operator(
    moto_server: MotoServer, mlflow_server: str, registered: str, aws: AwsClients
) -> Callable[[], Operator]:
    """A factory: each call is a freshly (re)started operator with its own AWS clients."""

    def start() -> Operator:
        calls: list[str] = []

        def counted(region: str, url: str | None, credentials: AwsCredentials | None):
            assert credentials == AwsCredentials.from_secret("aws-credentials", SECRET)
            clients = boto3_clients(region, url, credentials)
            clients.sagemaker.meta.events.register(
                "before-call.sagemaker.*", lambda model, **_: calls.append(model.name)
            )
            return clients

        endpoints = SageMakerEndpoints(
            mlflow_server,
            secrets=lambda namespace, name: SECRET if name == "aws-credentials" else None,
            artifact_bucket=BUCKET,
            endpoint_url=moto_server.endpoint_url,
            clients=counted,
        )
        reconciler = ModelDeploymentReconciler(
            backend=None,  # type: ignore[arg-type]  # Ray Serve is not involved
            models=MlflowModelResolver(mlflow_server),
            job_models=lambda namespace, job: registered if job == "churn-xgb" else None,
            sagemaker=endpoints,
        )
        return Operator(reconciler, calls)

    return start


def applied(**annotations: str) -> ModelDeployment:
    """The example as the API server stores it: namespace, UID and generation set."""
    doc = example()
    doc["metadata"] |= {
        "namespace": "team-a",
        "uid": str(uuid.uuid4()),
        "generation": 1,
        "annotations": annotations,
    }
    return ModelDeployment.model_validate(doc)


def edited(md: ModelDeployment, **sagemaker: Any) -> ModelDeployment:
    data = md.to_dict()
    data["spec"]["sagemaker"].update(sagemaker)
    data["metadata"]["generation"] += 1
    return ModelDeployment.model_validate(data)


def test_example_is_served_on_an_in_service_endpoint_and_deleting_it_leaves_nothing(
    start_operator: Callable[[], Operator],
    aws: AwsClients,
    registered: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mlplane")
    operator = start_operator()
    md = operator.step(applied())
    status = md.status
    assert status.phase == "Available", status
    ready = condition(status.conditions, "Ready")
    assert (ready.status, ready.reason) == ("True", "Serving")
    assert condition(status.conditions, "Synced").status == "True"
    name = render.names(md).endpoint
    assert status.url == f"{aws.sagemaker.meta.endpoint_url}/endpoints/{name}/invocations"
    assert status.traffic[0].uri == registered and status.traffic[0].percent == 100

    live = aws.sagemaker.describe_endpoint(EndpointName=name)
    assert live["EndpointStatus"] == "InService" == status.endpoint.status
    assert live["EndpointArn"] == status.endpoint.arn
    assert live["EndpointConfigName"] == status.endpoint.config_name
    model = aws.sagemaker.describe_model(ModelName=status.endpoint.model_name)
    container = model["PrimaryContainer"]
    assert container["ModelDataUrl"] == status.endpoint.model_data_url
    # An sklearn model: served by MLflow's pyfunc image in the execution role's account.
    assert container["Image"] == (
        f"123456789012.dkr.ecr.{REGION}.amazonaws.com/mlflow-pyfunc:{mlflow.__version__}"
    )
    tags = {
        t["Key"]: t["Value"]
        for t in aws.sagemaker.list_tags(ResourceArn=live["EndpointArn"])["Tags"]
    }
    assert tags["mlplane.dev/uid"] == md.metadata.uid
    key = status.endpoint.model_data_url.removeprefix(f"s3://{BUCKET}/")
    archive = aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"MLmodel", "requirements.txt"} <= set(tar.getnames())

    # Capacity only: changed in place on the same EndpointConfig.
    md = operator.step(edited(md, instanceCount=2))
    assert md.status.phase == "Available" and md.status.replicas.desired == 2
    assert md.status.endpoint.config_name == live["EndpointConfigName"]
    assert "UpdateEndpointWeightsAndCapacities" in operator.calls
    assert ("Normal", "Scaling", "instance count to 2") in operator.events

    # An operator restarted after creating everything but before writing status: it finds
    # the endpoint by its derived name and UID tag, and creates nothing.
    restarted = start_operator()
    again = restarted.step(md.model_copy(update={"status": None}))
    assert again.status.phase == "Available"
    assert again.status.endpoint.arn == live["EndpointArn"]
    assert not [c for c in restarted.calls if c.startswith(("Create", "Update"))], restarted.calls
    everything = left_in_moto(aws, md)
    assert len(everything["endpoints"]) == len(everything["configs"]) == 1
    assert len(everything["models"]) == len(everything["artifacts"]) == 1

    # No credential value in any status, Event or log line.
    surfaced = "\n".join([*operator.statuses, *restarted.statuses, caplog.text])
    surfaced += "\n".join(" ".join(e) for e in operator.events + restarted.events)
    assert caplog.text  # the operator did log (packaging, clean-up)
    for value in SECRET.values():
        assert value not in surfaced

    restarted.reconciler.delete(again)
    assert left_in_moto(aws, md) == {"endpoints": [], "configs": [], "models": [], "artifacts": []}
    restarted.reconciler.delete(again)  # a second delete (kopf retrying) is a no-op


def test_retain_policy_keeps_everything(
    start_operator: Callable[[], Operator], aws: AwsClients
) -> None:
    operator = start_operator()
    md = operator.step(applied(**{"mlplane.dev/deletion-policy": "retain"}))
    assert md.status.phase == "Available"
    before = left_in_moto(aws, md)
    operator.reconciler.delete(md)
    assert left_in_moto(aws, md) == before
    assert all(len(found) == 1 for found in before.values()), before


def test_serverless_endpoint(start_operator: Callable[[], Operator], aws: AwsClients) -> None:
    operator = start_operator()
    md = applied()
    md = operator.step(edited(md, serverless={"memorySizeInMB": 3072, "maxConcurrency": 4}))
    assert md.status.phase == "Available" and md.status.replicas is None
    config = aws.sagemaker.describe_endpoint_config(
        EndpointConfigName=md.status.endpoint.config_name
    )
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 3072,
        "MaxConcurrency": 4,
    }
    operator.reconciler.delete(md)
    assert left_in_moto(aws, md)["endpoints"] == []


def test_without_a_secret_the_operators_own_identity_is_used(
    moto_server: MotoServer,
    mlflow_server: str,
    registered: str,
    aws: AwsClients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No spec.sagemaker.credentialsSecret: no Secret is read and boto3's default chain (IRSA's
    web identity in a pod; here the environment) signs the calls."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATORIDENTITY1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-identity-secret")
    signed_with: list[str] = []

    def clients(region: str, url: str | None, credentials: AwsCredentials | None) -> AwsClients:
        assert credentials is None
        made = boto3_clients(region, url, credentials)
        made.sagemaker.meta.events.register(
            "before-send.sagemaker.*",
            lambda request, **_: signed_with.append(
                request.headers["Authorization"].decode().split("Credential=")[1].split("/")[0]
            ),
        )
        return made

    def no_secrets(namespace: str, name: str) -> dict[str, str]:
        raise AssertionError(f"read Secret {namespace}/{name} though none is named")

    reconciler = ModelDeploymentReconciler(
        backend=None,  # type: ignore[arg-type]  # Ray Serve is not involved
        models=MlflowModelResolver(mlflow_server),
        job_models=lambda namespace, job: registered,
        sagemaker=SageMakerEndpoints(
            mlflow_server,
            secrets=no_secrets,
            artifact_bucket=BUCKET,
            endpoint_url=moto_server.endpoint_url,
            clients=clients,
        ),
    )
    md = applied()
    data = md.to_dict()
    del data["spec"]["sagemaker"]["credentialsSecret"]
    md = ModelDeployment.model_validate(data)
    md = md.model_copy(update={"status": reconciler.reconcile(md).status})
    assert md.status.phase == "Available", md.status
    assert signed_with and set(signed_with) == {"AKIAOPERATORIDENTITY1"}
    reconciler.delete(md)
    assert left_in_moto(aws, md)["endpoints"] == []
