"""SageMaker request bodies from a ModelDeployment: names, hashes, image choice, blue/green."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends import sagemaker_render as render

EXAMPLE = Path(__file__).parents[2] / "examples" / "modeldeployment-sagemaker.yaml"
UID = "3f2a9c1e-5b7d-4e0a-9c2b-1d2e3f4a5b6c"
URL = "s3://bucket/mlplane/team-a/churn-sm-3f2a9c1e/abc/model.tar.gz"
IMAGE = render.Image("123456789012.dkr.ecr.eu-west-1.amazonaws.com/serve:1", {})


def deployment(name: str = "churn-sm", **sagemaker: Any) -> ModelDeployment:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] |= {"name": name, "namespace": "team-a", "uid": UID, "generation": 1}
    doc["spec"]["sagemaker"] |= sagemaker
    return ModelDeployment.model_validate(doc)


def config_name(md: ModelDeployment, image: render.Image = IMAGE) -> str:
    model = render.create_model(md, image, URL)
    return render.create_endpoint_config(md, model["ModelName"])["EndpointConfigName"]


def test_names_are_derived_from_name_and_uid_and_fit_sagemaker() -> None:
    names = render.names(deployment())
    assert names.base == names.endpoint == "churn-sm-3f2a9c1e"
    long = render.names(deployment(name="a" * 63))
    model = render.create_model(deployment(name="a" * 63), IMAGE, URL)["ModelName"]
    assert long.base == "a" * 40 + "-3f2a9c1e"
    assert len(model) <= 63 and model.startswith(long.base + "-")
    assert render.names(deployment(endpointName="legacy-churn")).endpoint == "legacy-churn"


def test_model_and_config_names_change_with_what_they_contain_and_only_then() -> None:
    md = deployment()
    model = render.create_model(md, IMAGE, URL)
    assert model == render.create_model(deployment(), IMAGE, URL)  # repeatable: no duplicates
    assert model["PrimaryContainer"] == {"Image": IMAGE.uri, "ModelDataUrl": URL, "Environment": {}}
    assert model["ExecutionRoleArn"] == "arn:aws:iam::123456789012:role/mlplane-sagemaker"
    other_model = render.create_model(md, IMAGE, URL.replace("abc", "def"))["ModelName"]
    assert other_model != model["ModelName"]
    assert config_name(deployment(instanceType="ml.c5.xlarge")) != config_name(md)
    # Capacity and tags are changed in place: same EndpointConfig.
    assert config_name(deployment(instanceCount=4)) == config_name(md)
    assert config_name(deployment(tags={"team": "risk"})) == config_name(md)
    serverless = deployment(serverless={"memorySizeInMB": 2048, "maxConcurrency": 5})
    more = deployment(serverless={"memorySizeInMB": 2048, "maxConcurrency": 50})
    bigger = deployment(serverless={"memorySizeInMB": 4096, "maxConcurrency": 5})
    assert config_name(more) == config_name(serverless) != config_name(bigger)


def test_endpoint_config_has_one_variant_with_instances_or_serverless() -> None:
    md = deployment(instanceCount=2)
    variant = render.create_endpoint_config(md, "m")["ProductionVariants"]
    assert variant == [
        {
            "VariantName": "AllTraffic",
            "ModelName": "m",
            "InstanceType": "ml.m5.large",
            "InitialInstanceCount": 2,
            "InitialVariantWeight": 1.0,
        }
    ]
    serverless = deployment(serverless={"memorySizeInMB": 3072, "maxConcurrency": 8})
    (variant,) = render.create_endpoint_config(serverless, "m")["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 8}
    assert "InstanceType" not in variant


def test_tags_mark_the_owner_beside_the_users_tags() -> None:
    tags = render.tags(deployment(tags={"team": "risk"}))
    assert {t["Key"]: t["Value"] for t in tags} == {
        "team": "risk",
        "mlplane.dev/namespace": "team-a",
        "mlplane.dev/name": "churn-sm",
        "mlplane.dev/uid": UID,
    }


@pytest.mark.parametrize(
    ("deployment_spec", "routing"),
    [
        (
            {"strategy": "allAtOnce", "waitIntervalSeconds": 60},
            {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 60},
        ),
        (
            {"strategy": "canary", "stepPercent": 10, "waitIntervalSeconds": 300},
            {
                "Type": "CANARY",
                "WaitIntervalInSeconds": 300,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
            },
        ),
        (
            {"strategy": "linear", "stepPercent": 25, "waitIntervalSeconds": 120},
            {
                "Type": "LINEAR",
                "WaitIntervalInSeconds": 120,
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
            },
        ),
    ],
)
def test_update_endpoint_carries_blue_green_traffic_shifting(
    deployment_spec: dict[str, Any], routing: dict[str, Any]
) -> None:
    body = render.update_endpoint(deployment(deployment=deployment_spec), "cfg")
    policy = body["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == routing
    assert body["EndpointName"] == "churn-sm-3f2a9c1e" and body["EndpointConfigName"] == "cfg"
    assert "AutoRollbackConfiguration" not in body["DeploymentConfig"]


def test_rollback_alarms_and_timeouts() -> None:
    md = deployment(
        deployment={
            "autoRollbackAlarms": ["churn-5xx", "churn-p99"],
            "terminationWaitSeconds": 600,
            "maximumExecutionTimeoutSeconds": 3600,
        }
    )
    config = render.update_endpoint(md, "cfg")["DeploymentConfig"]
    assert config["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "churn-5xx"}, {"AlarmName": "churn-p99"}]
    }
    assert config["BlueGreenUpdatePolicy"]["TerminationWaitInSeconds"] == 600
    assert config["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] == 3600


def test_capacity_updates_in_place() -> None:
    md = deployment(instanceCount=3)
    assert render.update_capacity(md) == {
        "EndpointName": "churn-sm-3f2a9c1e",
        "DesiredWeightsAndCapacities": [{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}],
    }
    variants = [{"VariantName": "AllTraffic", "DesiredInstanceCount": 1}]
    assert not render.capacity_matches(md.spec.sagemaker, variants)
    assert render.capacity_matches(deployment().spec.sagemaker, variants)
    serverless = deployment(serverless={"maxConcurrency": 20})
    assert render.update_capacity(serverless)["DesiredWeightsAndCapacities"] == [
        {"VariantName": "AllTraffic", "ServerlessUpdateConfig": {"MaxConcurrency": 20}}
    ]
    live = [{"VariantName": "AllTraffic", "DesiredServerlessConfig": {"MaxConcurrency": 5}}]
    assert not render.capacity_matches(serverless.spec.sagemaker, live)


def test_image_choice_by_model_layout() -> None:
    serving = deployment().spec.sagemaker
    xgb = render.choose_image(serving, {"xgboost", "python_function"}, "3.1.0")
    assert xgb.uri == "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    pyfunc = render.choose_image(serving, {"python_function"}, "3.1.0")
    assert pyfunc.uri == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-pyfunc:3.1.0"
    assert pyfunc.environment["MLFLOW_DEPLOYMENT_FLAVOR_NAME"] == "python_function"
    china = deployment(region="cn-north-1", roleArn="arn:aws-cn:iam::123456789012:role/r")
    assert render.choose_image(china.spec.sagemaker, {"python_function"}, "3").uri.startswith(
        "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/"
    )
    custom = deployment(image="my/serve:2", environment={"WORKERS": "4"})
    assert render.choose_image(custom.spec.sagemaker, set(), "3") == render.Image("my/serve:2", {})
    body = render.create_model(custom, render.Image("my/serve:2", {}), URL)
    assert body["PrimaryContainer"]["Environment"] == {"WORKERS": "4"}
    with pytest.raises(render.ImageUnknown, match=r"spec\.sagemaker\.image"):
        render.choose_image(serving, set(), "3")


def test_invocation_url() -> None:
    assert (
        render.invocation_url("eu-west-1", None, "ep")
        == "https://runtime.sagemaker.eu-west-1.amazonaws.com/endpoints/ep/invocations"
    )
    assert (
        render.invocation_url("us-east-1", "http://127.0.0.1:5000/", "ep")
        == "http://127.0.0.1:5000/endpoints/ep/invocations"
    )


def test_artifacts_live_under_the_deployments_prefix() -> None:
    md = deployment()
    key = render.artifact_key(md, "models:/churn/7")
    assert key.startswith(render.artifact_prefix(md)) and key.endswith("/model.tar.gz")
    assert key == render.artifact_key(deployment(), "models:/churn/7")
    assert key != render.artifact_key(md, "models:/churn/8")
