"""The sagemaker part of the ModelDeployment CRD on a real API server: its CEL rules refuse what
SageMaker or the operator would only refuse later, with the same words `mlplane validate` uses."""

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from sagemaker_support import example

from mlplane.crds.validation import validate_object

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "mlplane.dev", "v1alpha1", "modeldeployments"


def deployment(**sagemaker: Any) -> dict[str, Any]:
    doc = example()
    doc["spec"]["sagemaker"] |= sagemaker
    return doc


def refused(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as raised:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, doc
        )
    assert raised.value.status == 422, raised.value.body
    return raised.value.body


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (
            deployment(deployment={"strategy": "linear", "stepPercent": 5}),
            "linear steps move 10 to 50 percent of capacity",
        ),
        (deployment(deployment={"strategy": "canary", "stepPercent": 80}), "stepPercent"),
        (deployment(tags={"mlplane.dev/uid": "x"}), "mlplane.dev/ keys are the operator's"),
        (deployment(endpointName="churn_sm"), "endpointName"),
        (
            {
                **deployment(),
                "spec": {**deployment()["spec"], "canary": {"model": {"uri": "models:/m/2"}}},
            },
            "canary is for target ray",
        ),
    ],
)
def test_refused_by_the_api_server_and_by_mlplane_validate(
    doc: dict[str, Any], words: str, crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    assert words in refused(k8s_api, namespace, doc)
    assert validate_object(doc), "mlplane validate must refuse it too"


def test_target_cannot_change(crds: list[str], k8s_api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(k8s_api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, deployment())
    with pytest.raises(ApiException) as raised:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "churn-sm", {"spec": {"target": "ray"}}
        )
    assert raised.value.status == 422
    assert "target is immutable once created" in raised.value.body
