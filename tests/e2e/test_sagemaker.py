"""A SageMaker ModelDeployment through the real operator: credentials from a Secret, moto as AWS.

The operator reads the example's Secret with its own Kubernetes client, packages the model from
the session's MLflow server, creates the endpoint in moto (reached through spec.sagemaker
.endpointUrl), and on deletion its finalizer removes everything it created. No credential value
may appear in the status, the Events or the operator's log.
"""

from __future__ import annotations

import time

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
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
from mlplane.operator.backends.aws import AwsCredentials, boto3_clients

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.mlflow]


def test_endpoint_from_secret_credentials_then_deleted_by_the_finalizer(
    resources,
    k8s_api: client.ApiClient,
    namespace: str,
    moto_server: MotoServer,
    mlflow_server: str,
) -> None:
    aws = boto3_clients(REGION, moto_server.endpoint_url, AwsCredentials("test", "test"))
    create_bucket(aws)
    client.CoreV1Api(k8s_api).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "aws-credentials"}, "type": "Opaque", "stringData": SECRET},
    )
    doc = example()
    doc["spec"]["model"] = {"uri": register_model(mlflow_server)}
    doc["spec"]["sagemaker"] |= {"endpointUrl": moto_server.endpoint_url, "artifactBucket": BUCKET}
    resources.apply(doc)

    obj = resources.wait_for_phase("modeldeployments", "churn-sm", {"Available", "Failed"}, 60)
    status = obj["status"]
    assert status["phase"] == "Available", status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == conditions["Synced"]["status"] == "True"
    name = status["endpoint"]["name"]
    assert aws.sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    assert status["url"].endswith(f"/endpoints/{name}/invocations")

    events = client.CoreV1Api(k8s_api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=churn-sm"
    )
    reasons = [e.reason for e in events.items]
    assert "Creating" in reasons
    surfaced = "\n".join(
        [yaml.safe_dump(obj), resources.operator.log(), *(e.message for e in events.items)]
    )
    for value in SECRET.values():
        assert value not in surfaced

    md = ModelDeployment.model_validate(obj)
    assert all(len(found) == 1 for found in left_in_moto(aws, md).values())
    resources.delete("modeldeployments", "churn-sm")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            resources.get("modeldeployments", "churn-sm")
        except ApiException as error:
            assert error.status == 404
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the finalizer did not let churn-sm go within 30s")
    assert left_in_moto(aws, md) == {"endpoints": [], "configs": [], "models": [], "artifacts": []}
