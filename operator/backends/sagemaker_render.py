"""SageMaker request bodies for a ModelDeployment, as pure functions of its spec.

Every name is derived, never stored: the endpoint is `<name>-<uid8>` (or
spec.sagemaker.endpointName), a Model and an EndpointConfig are that base plus a hash of what they
contain. Recomputing a name
therefore finds what an earlier reconcile (or an operator that died halfway) already created, and a
spec change that alters a Model or EndpointConfig yields a new name, which is what SageMaker needs:
both are immutable once created.

Capacity (instance count, serverless concurrency) is left out of the EndpointConfig's hash: a
capacity change is applied in place with UpdateEndpointWeightsAndCapacities instead of a new config
and a blue/green deployment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlplane.crds.modeldeployment import ModelDeployment, SageMakerDeployment, SageMakerServing

UID_TAG = "mlplane.dev/uid"

# Container families a packaged model can be served by (recorded on its model.tar.gz).
XGBOOST_LAYOUT = "xgboost"
"""The tarball holds `xgboost-model`, the file SageMaker's XGBoost container loads."""
PYFUNC_LAYOUT = "python_function"
"""The tarball is an MLflow model directory, which MLflow's pyfunc container serves."""

# SageMaker's XGBoost serving image and the registry account that hosts it in each region
# (AWS publishes these; the sagemaker SDK carries the same table in image_uri_config/xgboost.json).
XGBOOST_IMAGE = "sagemaker-xgboost:1.7-1"
XGBOOST_REGISTRIES = {
    "ap-northeast-1": "354813040037",
    "ap-northeast-2": "366743142698",
    "ap-south-1": "720646828776",
    "ap-southeast-1": "121021644041",
    "ap-southeast-2": "783357654285",
    "ca-central-1": "341280168497",
    "eu-central-1": "492215442770",
    "eu-north-1": "662702820516",
    "eu-west-1": "141502667606",
    "eu-west-2": "764974769150",
    "eu-west-3": "659782779980",
    "sa-east-1": "737474898029",
    "us-east-1": "683313688378",
    "us-east-2": "257758044811",
    "us-west-1": "746614075791",
    "us-west-2": "246618743249",
}
# What `mlflow sagemaker build-and-push-container` pushes to the caller's own account.
PYFUNC_REPOSITORY = "mlflow-pyfunc"
PYFUNC_ENVIRONMENT = {
    "MLFLOW_DEPLOYMENT_FLAVOR_NAME": "python_function",
    "SERVING_ENVIRONMENT": "SageMaker",
}

_STRATEGIES = {"allAtOnce": "ALL_AT_ONCE", "canary": "CANARY", "linear": "LINEAR"}
_ROLE_ACCOUNT = re.compile(r"^arn:aws[a-z-]*:iam::(?P<account>[0-9]{12}):role/")


class ImageUnknown(ValueError):
    """No serving image follows from the model; the message says what to set."""


@dataclass(frozen=True)
class Names:
    """Where a deployment's SageMaker resources live."""

    base: str
    """`<name>-<uid8>`: the prefix of every Model and EndpointConfig, and of the S3 artifacts."""
    endpoint: str


@dataclass(frozen=True)
class Image:
    """The serving container and the environment it needs."""

    uri: str
    environment: dict[str, str]


def names(deployment: ModelDeployment) -> Names:
    meta = deployment.metadata
    if not meta.uid:
        raise ValueError("metadata.uid is unset; SageMaker names are derived from it")
    stem = re.sub(r"[^a-zA-Z0-9]+", "-", meta.name)[:40].strip("-")
    base = f"{stem}-{meta.uid.replace('-', '')[:8]}"
    return Names(base=base, endpoint=_serving(deployment).endpoint_name or base)


def _serving(deployment: ModelDeployment) -> SageMakerServing:
    serving = deployment.spec.sagemaker
    if serving is None:
        raise ValueError("target sagemaker needs the sagemaker section")
    return serving


def _digest(value: Any, length: int = 10) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def artifact_prefix(deployment: ModelDeployment) -> str:
    """The S3 prefix (in the artifact bucket) of every model.tar.gz this deployment uploaded."""
    return f"mlplane/{deployment.metadata.namespace or 'default'}/{names(deployment).base}/"


def artifact_key(deployment: ModelDeployment, model_uri: str) -> str:
    """The model.tar.gz of one pinned model URI: the same URI always packs to the same key."""
    return f"{artifact_prefix(deployment)}{_digest(model_uri, 16)}/model.tar.gz"


def owner_tags(deployment: ModelDeployment) -> dict[str, str]:
    meta = deployment.metadata
    return {
        "mlplane.dev/namespace": meta.namespace or "default",
        "mlplane.dev/name": meta.name,
        UID_TAG: meta.uid or "",
    }


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def tags(deployment: ModelDeployment) -> list[dict[str, str]]:
    """The user's tags plus the ones that mark the resource as this deployment's."""
    return tag_list({**_serving(deployment).tags, **owner_tags(deployment)})


def choose_image(serving: SageMakerServing, layouts: Iterable[str], mlflow_version: str) -> Image:
    """spec.sagemaker.image if set; else SageMaker's XGBoost image when the model has that layout
    and the region hosts it; else MLflow's pyfunc image in the execution role's account."""
    layouts = set(layouts)
    if serving.image:
        return Image(serving.image, {})
    suffix = _dns_suffix(serving.region)
    registry = XGBOOST_REGISTRIES.get(serving.region)
    if XGBOOST_LAYOUT in layouts and registry:
        return Image(f"{registry}.dkr.ecr.{serving.region}.{suffix}/{XGBOOST_IMAGE}", {})
    account = _ROLE_ACCOUNT.match(serving.role_arn)
    if PYFUNC_LAYOUT in layouts and account:
        return Image(
            f"{account['account']}.dkr.ecr.{serving.region}.{suffix}/"
            f"{PYFUNC_REPOSITORY}:{mlflow_version}",
            dict(PYFUNC_ENVIRONMENT),
        )
    raise ImageUnknown(
        "spec.sagemaker.image: no serving image is known for this model (it is neither an MLflow "
        "model nor a model.tar.gz of a known layout); set the image"
    )


def create_model(deployment: ModelDeployment, image: Image, model_data_url: str) -> dict[str, Any]:
    """CreateModel: the image, model.tar.gz and role; named by a hash of the three."""
    serving = _serving(deployment)
    body: dict[str, Any] = {
        "ExecutionRoleArn": serving.role_arn,
        "PrimaryContainer": {
            "Image": image.uri,
            "ModelDataUrl": model_data_url,
            "Environment": {**image.environment, **serving.environment},
        },
    }
    return {
        "ModelName": f"{names(deployment).base}-{_digest(body)}",
        **body,
        "Tags": tags(deployment),
    }


def create_endpoint_config(deployment: ModelDeployment, model_name: str) -> dict[str, Any]:
    """CreateEndpointConfig: one production variant; the name hashes all but its capacity."""
    serving = _serving(deployment)
    variant: dict[str, Any] = {"VariantName": serving.variant_name, "ModelName": model_name}
    if serving.serverless:
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": serving.serverless.memory_size_mb,
            "MaxConcurrency": serving.serverless.max_concurrency,
        }
    else:
        variant.update(
            InstanceType=serving.instance_type,
            InitialInstanceCount=serving.instance_count,
            InitialVariantWeight=1.0,
        )
    return {
        "EndpointConfigName": f"{names(deployment).base}-{_digest(_without_capacity(variant))}",
        "ProductionVariants": [variant],
        "Tags": tags(deployment),
    }


def _without_capacity(variant: dict[str, Any]) -> dict[str, Any]:
    shape = {k: v for k, v in variant.items() if k != "InitialInstanceCount"}
    if "ServerlessConfig" in shape:
        shape["ServerlessConfig"] = {
            k: v for k, v in shape["ServerlessConfig"].items() if k != "MaxConcurrency"
        }
    return shape


def create_endpoint(deployment: ModelDeployment, config_name: str) -> dict[str, Any]:
    return {
        "EndpointName": names(deployment).endpoint,
        "EndpointConfigName": config_name,
        "Tags": tags(deployment),
    }


def deployment_config(deployment: SageMakerDeployment) -> dict[str, Any]:
    """DeploymentConfig: blue/green with the spec's traffic shifting and rollback alarms."""
    routing: dict[str, Any] = {
        "Type": _STRATEGIES[deployment.strategy],
        "WaitIntervalInSeconds": deployment.wait_interval_seconds,
    }
    step = {"Type": "CAPACITY_PERCENT", "Value": deployment.step_percent}
    if deployment.strategy == "canary":
        routing["CanarySize"] = step
    elif deployment.strategy == "linear":
        routing["LinearStepSize"] = step
    policy: dict[str, Any] = {
        "TrafficRoutingConfiguration": routing,
        "TerminationWaitInSeconds": deployment.termination_wait_seconds,
    }
    if deployment.maximum_execution_timeout_seconds is not None:
        policy["MaximumExecutionTimeoutInSeconds"] = deployment.maximum_execution_timeout_seconds
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
    if deployment.auto_rollback_alarms:
        config["AutoRollbackConfiguration"] = {
            "Alarms": [{"AlarmName": alarm} for alarm in deployment.auto_rollback_alarms]
        }
    return config


def update_endpoint(deployment: ModelDeployment, config_name: str) -> dict[str, Any]:
    """UpdateEndpoint to a new EndpointConfig, shifting traffic as spec.sagemaker.deployment
    says."""
    return {
        "EndpointName": names(deployment).endpoint,
        "EndpointConfigName": config_name,
        "DeploymentConfig": deployment_config(_serving(deployment).deployment),
        "RetainDeploymentConfig": False,
    }


def update_capacity(deployment: ModelDeployment) -> dict[str, Any]:
    """UpdateEndpointWeightsAndCapacities: the spec's instance count or serverless concurrency."""
    serving = _serving(deployment)
    desired: dict[str, Any] = {"VariantName": serving.variant_name}
    if serving.serverless:
        desired["ServerlessUpdateConfig"] = {"MaxConcurrency": serving.serverless.max_concurrency}
    else:
        desired["DesiredInstanceCount"] = serving.instance_count
    return {"EndpointName": names(deployment).endpoint, "DesiredWeightsAndCapacities": [desired]}


def capacity_matches(serving: SageMakerServing, variants: list[dict[str, Any]]) -> bool:
    """Whether the endpoint's variant already has the spec's capacity (as DescribeEndpoint says)."""
    variant = next((v for v in variants if v.get("VariantName") == serving.variant_name), None)
    if variant is None:
        return True  # not ours to resize: a config change replaces the variant
    if serving.serverless:
        desired = variant.get("DesiredServerlessConfig") or {}
        return desired.get("MaxConcurrency", serving.serverless.max_concurrency) == (
            serving.serverless.max_concurrency
        )
    return variant.get("DesiredInstanceCount", serving.instance_count) == serving.instance_count


def invocation_url(region: str, endpoint_url: str | None, endpoint: str) -> str:
    """Where clients POST requests (SageMaker Runtime's InvokeEndpoint). With a custom endpoint
    URL the runtime is assumed at the same address, as moto serves it."""
    base = (endpoint_url or f"https://runtime.sagemaker.{region}.{_dns_suffix(region)}").rstrip("/")
    return f"{base}/endpoints/{endpoint}/invocations"


def _dns_suffix(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
