"""The SageMaker endpoint transitions moto cannot show, driven through botocore's Stubber.

moto creates endpoints InService at once and has no UpdateEndpoint; here SageMaker's answers are
scripted call by call (Creating, Updating, RollingBack, Failed with a FailureReason, throttling,
AccessDenied) and the reconciler runs exactly as the operator runs it: ModelDeploymentReconciler
delegating to SageMakerEndpoints with real boto3 clients. The Stubber is strict, so every test
also proves which calls were *not* made (no second CreateEndpoint, no update loop after a
rollback). The moto-backed happy path is tests/integration/test_sagemaker_moto.py.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from mlplane.crds.modeldeployment import ModelDeployment
from mlplane.operator.backends import sagemaker_render as render
from mlplane.operator.backends.aws import AwsClients
from mlplane.operator.backends.sagemaker import SageMakerEndpoints
from mlplane.operator.modeldeployment import DeletionPending, ModelDeploymentReconciler
from mlplane.operator.status import condition
from mlplane.serving.config import ModelRef

EXAMPLE = Path(__file__).parents[2] / "examples" / "modeldeployment-sagemaker.yaml"
UID = "0c1d2e3f-4a5b-4c6d-8e9f-a0b1c2d3e4f5"
ENDPOINT = "churn-sm-0c1d2e3f"
ARN = f"arn:aws:sagemaker:eu-west-1:123456789012:endpoint/{ENDPOINT}"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churn-serve:1"
V1 = "s3://models/churn/v1/model.tar.gz"
V2 = "s3://models/churn/v2/model.tar.gz"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
SECRET = {"aws_access_key_id": "AKIASTUBSTUBSTUB0001", "aws_secret_access_key": "stub-secret"}


def applied(**sagemaker: Any) -> ModelDeployment:
    """The example as the API server stores it, serving a packaged model with a given image."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] |= {"namespace": "team-a", "uid": UID, "generation": 1}
    doc["spec"]["model"] = {"uri": V1}
    doc["spec"]["sagemaker"] |= {"image": IMAGE, **sagemaker}
    return ModelDeployment.model_validate(doc)


def edited(md: ModelDeployment, model: str | None = None, **sagemaker: Any) -> ModelDeployment:
    """The resource after `kubectl edit`: spec changed, generation bumped, status kept."""
    data = md.to_dict()
    data["spec"]["sagemaker"].update(sagemaker)
    if model:
        data["spec"]["model"] = {"uri": model}
    data["metadata"]["generation"] += 1
    return ModelDeployment.model_validate(data)


def names_for(md: ModelDeployment) -> tuple[dict[str, Any], dict[str, Any]]:
    """The CreateModel and CreateEndpointConfig bodies the spec implies."""
    assert md.spec.model.uri
    model = render.create_model(md, render.Image(IMAGE, {}), md.spec.model.uri)
    return model, render.create_endpoint_config(md, model["ModelName"])


class Registry:
    def resolve(self, uri: str) -> ModelRef:
        return ModelRef(uri)


@dataclass
class Clock:
    at: datetime = T0

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Harness:
    """One ModelDeployment, the reconciler, and a scripted SageMaker."""

    md: ModelDeployment
    clock: Clock = field(default_factory=Clock)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A fresh operator: new reconciler, new clients, only the resource's status survives."""
        keys = {"aws_access_key_id": "AKIASTUB", "aws_secret_access_key": "stub"}
        self.sm = boto3.client("sagemaker", region_name="eu-west-1", **keys)
        s3 = boto3.client("s3", region_name="eu-west-1", **keys)
        self.stub = Stubber(self.sm)
        self.stub.activate()
        Stubber(s3).activate()  # no S3 call is expected: the models are packaged already
        self.secrets_read: list[tuple[str, str]] = []

        def secrets(namespace: str, name: str) -> dict[str, str]:
            self.secrets_read.append((namespace, name))
            return SECRET

        endpoints = SageMakerEndpoints(
            "unused://mlflow",
            secrets,
            clients=lambda region, url, credentials: AwsClients(self.sm, s3),
            clock=self.clock,
        )
        self.reconciler = ModelDeploymentReconciler(
            backend=None,  # type: ignore[arg-type]  # Ray Serve is not involved
            models=Registry(),
            job_models=lambda namespace, name: None,
            sagemaker=endpoints,
        )

    # -- scripting SageMaker ----------------------------------------------------------------------

    def expect(
        self,
        operation: str,
        params: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> None:
        """The next call must be `operation` (with exactly `params`, when given)."""
        self.stub.add_response(operation, response or {}, params)

    def describe(
        self,
        status: str,
        config: str,
        failure: str | None = None,
        count: int = 1,
        desired: int | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "EndpointName": ENDPOINT,
            "EndpointArn": ARN,
            "EndpointConfigName": config,
            "EndpointStatus": status,
            "CreationTime": T0,
            "LastModifiedTime": T0,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "CurrentInstanceCount": count,
                    "DesiredInstanceCount": count if desired is None else desired,
                }
            ],
        }
        if failure:
            body["FailureReason"] = failure
        self.expect("describe_endpoint", {"EndpointName": ENDPOINT}, body)

    def missing(self) -> None:
        self.stub.add_client_error(
            "describe_endpoint",
            "ValidationException",
            f'Could not find endpoint "{ARN}".',
            expected_params={"EndpointName": ENDPOINT},
        )

    def created(self, operation: str, body: dict[str, Any]) -> None:
        arn_key = {"create_model": "ModelArn", "create_endpoint_config": "EndpointConfigArn"}
        self.expect(operation, body, {arn_key.get(operation, "EndpointArn"): ARN})

    def listed(self, configs: list[str], models: list[str], keep: bool = True) -> None:
        """The clean-up's listings; all but the last of each are deleted (all, without keep)."""
        prefix = render.names(self.md).base
        self.expect(
            "list_endpoint_configs",
            {"NameContains": prefix},
            {
                "EndpointConfigs": [
                    {"EndpointConfigName": c, "EndpointConfigArn": ARN, "CreationTime": T0}
                    for c in configs
                ]
            },
        )
        for name in configs[:-1] if keep else configs:
            self.expect("delete_endpoint_config", {"EndpointConfigName": name})
        self.expect(
            "list_models",
            {"NameContains": prefix},
            {"Models": [{"ModelName": m, "ModelArn": ARN, "CreationTime": T0} for m in models]},
        )
        for name in models[:-1] if keep else models:
            self.expect("delete_model", {"ModelName": name})

    # -- driving ---------------------------------------------------------------------------------

    def step(self) -> ModelDeployment:
        result = self.reconciler.reconcile(self.md)
        self.events += [(e.type, e.reason, e.message) for e in result.events]
        self.md = self.md.model_copy(update={"status": result.status})
        self.stub.assert_no_pending_responses()
        return self.md

    def edit(self, model: str | None = None, **sagemaker: Any) -> None:
        self.md = edited(self.md, model, **sagemaker)

    def cond(self, type_: str) -> tuple[str, str, str] | None:
        assert self.md.status
        found = condition(self.md.status.conditions, type_)
        return (found.status, found.reason, found.message) if found else None

    def create_and_serve(self) -> None:
        """Deploy V1 to InService (the start of most stories)."""
        model, config = names_for(self.md)
        self.missing()
        self.created("create_model", model)
        self.created("create_endpoint_config", config)
        self.created(
            "create_endpoint", render.create_endpoint(self.md, config["EndpointConfigName"])
        )
        self.describe("Creating", config["EndpointConfigName"])
        self.step()
        self.describe("InService", config["EndpointConfigName"])
        self.listed([config["EndpointConfigName"]], [model["ModelName"]])
        assert self.step().status.phase == "Available"

    def update(self, update_params: dict[str, Any] | None = None, **spec: Any) -> str:
        """Edit the spec of a serving deployment so that it needs a new EndpointConfig; SageMaker
        takes the UpdateEndpoint (checked against `update_params`, when given) and reports the
        endpoint Updating, still on its config. The new EndpointConfig's name."""
        assert self.md.status and self.md.status.endpoint
        in_use = self.md.status.endpoint.config_name or ""
        failure = self.md.status.endpoint.failure_reason
        self.edit(**spec)
        model, config = names_for(self.md)
        self.describe("InService", in_use, failure=failure)
        self.created("create_model", model)
        self.created("create_endpoint_config", config)
        self.expect("update_endpoint", update_params, {"EndpointArn": ARN})
        self.describe("Updating", in_use)
        self.step()
        return config["EndpointConfigName"]


def test_creating_then_in_service_and_a_restart_during_creating_creates_nothing_twice() -> None:
    h = Harness(applied())
    model, config = names_for(h.md)
    config_name = config["EndpointConfigName"]
    h.missing()
    h.created("create_model", model)
    h.created("create_endpoint_config", config)
    h.created("create_endpoint", render.create_endpoint(h.md, config_name))
    h.describe("Creating", config_name)
    status = h.step().status
    assert status.phase == "Deploying"
    assert h.cond("Ready") == ("False", "Creating", f"SageMaker is creating endpoint {ENDPOINT}")
    assert h.cond("Progressing")[0] == "True"
    assert h.cond("Synced")[:2] == ("False", "Creating")
    assert h.cond("Terminal") is None
    assert status.endpoint.arn == ARN and status.endpoint.status == "Creating"
    assert status.endpoint.target_config_name == config_name
    assert status.endpoint.image == IMAGE and status.endpoint.model_data_url == V1
    assert ("Normal", "Creating", f"creating endpoint {ENDPOINT} ({config_name})") in h.events
    assert h.secrets_read == [("team-a", "aws-credentials")]

    # The operator restarts while SageMaker is still creating: it only looks.
    h.restart()
    h.describe("Creating", config_name)
    assert h.step().status.phase == "Deploying"

    # ...and a restart that also lost the status finds the endpoint by its name and UID tag.
    kept = h.md.status
    h.md = h.md.model_copy(update={"status": None})
    h.restart()
    h.describe("Creating", config_name)
    h.expect("list_tags", {"ResourceArn": ARN}, {"Tags": render.tags(h.md)})
    assert h.step().status.endpoint.arn == kept.endpoint.arn

    h.describe("InService", config_name, count=1)
    h.listed([config_name], [model["ModelName"]])
    status = h.step().status
    assert status.phase == "Available"
    assert h.cond("Ready")[:2] == ("True", "Serving")
    assert h.cond("Synced")[0] == "True" and h.cond("Progressing")[0] == "False"
    assert status.url == (
        f"https://runtime.sagemaker.eu-west-1.amazonaws.com/endpoints/{ENDPOINT}/invocations"
    )
    assert status.replicas.ready == 1 and status.traffic[0].uri == V1
    assert status.traffic[0].percent == 100


def test_model_change_is_a_blue_green_update_then_old_config_and_model_are_deleted() -> None:
    h = Harness(applied())
    h.create_and_serve()
    old_model, old_config = names_for(h.md)
    blue_green = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "WaitIntervalInSeconds": 300,
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
            },
            "TerminationWaitInSeconds": 0,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "churn-sm-5xx"}]},
    }
    config = h.update(
        {
            "EndpointName": ENDPOINT,
            "EndpointConfigName": names_for(edited(h.md, model=V2))[1]["EndpointConfigName"],
            "DeploymentConfig": blue_green,
            "RetainDeploymentConfig": False,
        },
        model=V2,
    )
    model = names_for(h.md)[0]["ModelName"]
    status = h.md.status
    assert status.phase == "Progressing"
    assert h.cond("Ready")[:2] == ("True", "Serving")  # the old fleet serves during blue/green
    assert h.cond("Progressing")[:2] == ("True", "Updating")
    assert status.endpoint.target_config_name == config
    assert status.endpoint.config_name == old_config["EndpointConfigName"]
    assert status.traffic[0].uri == V1  # still the old model
    assert ("Normal", "Updating", f"deploying {config} ({V2})") in h.events

    h.describe("Updating", old_config["EndpointConfigName"])
    assert h.step().status.phase == "Progressing"  # no second UpdateEndpoint (Stubber is strict)

    h.describe("InService", config)
    h.listed([old_config["EndpointConfigName"], config], [old_model["ModelName"], model])
    status = h.step().status
    assert status.phase == "Available" and status.traffic[0].uri == V2
    assert status.endpoint.config_name == config


def test_rolled_back_update_is_reported_not_retried_until_the_spec_changes() -> None:
    h = Harness(applied())
    h.create_and_serve()
    _, old_config = names_for(h.md)
    h.update(model=V2)

    alarm = "Alarm churn-sm-5xx went into ALARM during the canary step"
    h.describe("RollingBack", old_config["EndpointConfigName"], failure=alarm)
    status = h.step().status
    assert status.phase == "RollingBack"
    assert h.cond("Progressing") == (
        "True",
        "RollingBack",
        f"SageMaker is rolling endpoint {ENDPOINT} back: {alarm}",
    )
    assert h.events[-1][:2] == ("Warning", "RollingBack")

    for _ in range(2):  # rolled back: reported, and UpdateEndpoint is not called again
        h.describe("InService", old_config["EndpointConfigName"], failure=alarm)
        status = h.step().status
        assert status.phase == "Degraded"
        assert h.cond("Ready")[0] == "True"
        assert h.cond("Terminal")[:2] == ("True", "UpdateRolledBack")
        assert alarm in h.cond("Terminal")[2] and alarm in status.endpoint.failure_reason
        assert status.traffic[0].uri == V1

    h.update(instanceType="ml.c5.large")  # a new spec is a new attempt
    assert h.md.status.phase == "Progressing"
    assert h.cond("Terminal") is None


def test_failed_endpoint_shows_its_failure_reason_and_is_replaced_on_a_spec_change() -> None:
    h = Harness(applied())
    model, config = names_for(h.md)
    h.missing()
    h.created("create_model", model)
    h.created("create_endpoint_config", config)
    h.created("create_endpoint", render.create_endpoint(h.md, config["EndpointConfigName"]))
    h.describe("Creating", config["EndpointConfigName"])
    h.step()
    why = "The primary container for production variant AllTraffic did not pass the ping check."
    h.describe("Failed", config["EndpointConfigName"], failure=why)
    status = h.step().status
    assert status.phase == "Failed"
    assert h.cond("Ready") == ("False", "EndpointFailed", f"endpoint {ENDPOINT} failed: {why}")
    assert h.cond("Terminal")[:2] == ("True", "EndpointFailed")
    assert status.endpoint.failure_reason == why
    assert h.events[-1] == ("Warning", "EndpointFailed", f"endpoint {ENDPOINT} failed: {why}")

    h.describe("Failed", config["EndpointConfigName"], failure=why)
    assert h.step().status.phase == "Failed"  # nothing retried while the spec is the same

    h.edit(image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/churn-serve:2")
    h.describe("Failed", config["EndpointConfigName"], failure=why)
    h.expect("delete_endpoint", {"EndpointName": ENDPOINT})
    h.describe("Deleting", config["EndpointConfigName"])
    assert h.step().status.phase == "Deploying"
    assert h.cond("Progressing")[:2] == ("True", "Deleting")


def test_update_rollback_failed_is_degraded_and_terminal() -> None:
    h = Harness(applied())
    h.create_and_serve()
    _, config = names_for(h.md)
    why = "Rollback failed: new instances could not be terminated"
    h.describe("UpdateRollbackFailed", config["EndpointConfigName"], failure=why)
    status = h.step().status
    assert status.phase == "Degraded"
    assert h.cond("Ready")[0] == "True"
    assert h.cond("Terminal")[:2] == ("True", "UpdateRollbackFailed")
    assert why in h.cond("Progressing")[2]


def test_capacity_and_tag_changes_are_applied_in_place() -> None:
    h = Harness(applied())
    h.create_and_serve()
    _, config = names_for(h.md)
    h.edit(instanceCount=3)
    assert names_for(h.md)[1]["EndpointConfigName"] == config["EndpointConfigName"]
    h.describe("InService", config["EndpointConfigName"], count=1)
    h.expect(
        "update_endpoint_weights_and_capacities",
        {
            "EndpointName": ENDPOINT,
            "DesiredWeightsAndCapacities": [
                {"VariantName": "AllTraffic", "DesiredInstanceCount": 3}
            ],
        },
        {"EndpointArn": ARN},
    )
    h.describe("Updating", config["EndpointConfigName"], count=1, desired=3)
    status = h.step().status
    assert status.phase == "Progressing"
    assert status.replicas.ready == 1 and status.replicas.desired == 3
    assert ("Normal", "Scaling", "instance count to 3") in h.events

    h.describe("InService", config["EndpointConfigName"], count=3)
    model, _ = names_for(h.md)
    h.listed([config["EndpointConfigName"]], [model["ModelName"]])  # nothing became unused
    assert h.step().status.phase == "Available"

    h.edit(tags={"team": "risk", "cost-center": "42"})
    h.describe("InService", config["EndpointConfigName"], count=3)
    h.expect(
        "add_tags",
        {
            "ResourceArn": ARN,
            "Tags": [{"Key": "cost-center", "Value": "42"}, {"Key": "team", "Value": "risk"}],
        },
    )
    assert h.step().status.endpoint.tags == {"team": "risk", "cost-center": "42"}
    h.edit(tags={"team": "fraud"})
    h.describe("InService", config["EndpointConfigName"], count=3)
    h.expect("delete_tags", {"ResourceArn": ARN, "TagKeys": ["cost-center"]})
    h.expect("add_tags", {"ResourceArn": ARN, "Tags": [{"Key": "team", "Value": "fraud"}]})
    h.step()
    h.describe("InService", config["EndpointConfigName"], count=3)
    h.step()  # applied once: no tag calls now


def test_serverless_concurrency_changes_in_place() -> None:
    h = Harness(applied(serverless={"memorySizeInMB": 2048, "maxConcurrency": 5}))
    h.create_and_serve()
    _, config = names_for(h.md)
    assert "ServerlessConfig" in config["ProductionVariants"][0]
    h.edit(serverless={"memorySizeInMB": 2048, "maxConcurrency": 20})
    h.stub.add_response(
        "describe_endpoint",
        {
            "EndpointName": ENDPOINT,
            "EndpointArn": ARN,
            "EndpointConfigName": config["EndpointConfigName"],
            "EndpointStatus": "InService",
            "CreationTime": T0,
            "LastModifiedTime": T0,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "DesiredServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5},
                }
            ],
        },
    )
    h.expect(
        "update_endpoint_weights_and_capacities",
        {
            "EndpointName": ENDPOINT,
            "DesiredWeightsAndCapacities": [
                {"VariantName": "AllTraffic", "ServerlessUpdateConfig": {"MaxConcurrency": 20}}
            ],
        },
        {"EndpointArn": ARN},
    )
    h.describe("Updating", config["EndpointConfigName"])
    assert h.step().status.phase == "Progressing"
    assert h.md.status.replicas is None  # no instances to count


def test_throttling_is_retried_next_time_without_losing_the_phase() -> None:
    h = Harness(applied())
    h.create_and_serve()
    _, config = names_for(h.md)
    h.stub.add_client_error(
        "describe_endpoint", "ThrottlingException", "Rate exceeded", http_status_code=400
    )
    status = h.step().status
    assert status.phase == "Available"  # the endpoint still serves
    assert h.cond("Synced") == ("False", "ThrottlingException", "DescribeEndpoint: Rate exceeded")
    assert h.cond("Progressing")[0] == "True" and h.cond("Terminal") is None
    assert h.cond("Ready")[0] == "True"

    h.describe("InService", config["EndpointConfigName"])
    h.step()
    assert h.cond("Synced")[0] == "True"


def test_access_denied_is_terminal_with_the_aws_message_and_retried_later() -> None:
    h = Harness(applied())
    denied = (
        "User: arn:aws:sts::123456789012:assumed-role/mlplane/op is not authorized to perform: "
        "sagemaker:CreateModel"
    )
    h.missing()
    h.stub.add_client_error("create_model", "AccessDeniedException", denied, http_status_code=400)
    status = h.step().status
    assert status.phase == "Failed"
    assert h.cond("Terminal") == ("True", "AccessDeniedException", f"CreateModel: {denied}")
    assert h.cond("Ready")[0] == "False" and h.cond("Progressing")[0] == "False"
    assert status.endpoint.retry_after == T0 + timedelta(minutes=10)
    assert h.events[-1][:2] == ("Warning", "AccessDeniedException")

    h.clock.at += timedelta(minutes=5)
    h.step()  # within the back-off: no call at all (the Stubber has none scripted)

    h.clock.at += timedelta(minutes=6)
    h.missing()
    h.stub.add_client_error("create_model", "ValidationException", "Role is invalid")
    h.step()
    assert h.cond("Terminal") == ("True", "ValidationException", "CreateModel: Role is invalid")


def test_endpoint_of_someone_else_is_not_touched_unless_adopted() -> None:
    h = Harness(applied(endpointName=ENDPOINT))
    foreign = [{"Key": "owner", "Value": "ml-platform"}]
    h.describe("InService", "hand-made-config")
    h.expect("list_tags", {"ResourceArn": ARN}, {"Tags": foreign})
    status = h.step().status
    assert status.phase == "Failed"
    assert h.cond("Terminal")[:2] == ("True", "EndpointNameTaken")
    assert 'mlplane.dev/adopt: "true"' in h.cond("Terminal")[2]

    data = h.md.to_dict()
    data["metadata"]["annotations"] = {"mlplane.dev/adopt": "true"}
    data["metadata"]["generation"] += 1
    h.md = ModelDeployment.model_validate(data)
    model, config = names_for(h.md)
    h.describe("InService", "hand-made-config")
    h.expect("list_tags", {"ResourceArn": ARN}, {"Tags": foreign})
    h.expect("add_tags", {"ResourceArn": ARN, "Tags": render.tag_list(render.owner_tags(h.md))})
    h.created("create_model", model)
    h.created("create_endpoint_config", config)
    h.expect("update_endpoint", response={"EndpointArn": ARN})
    h.describe("Updating", "hand-made-config")
    assert h.step().status.phase == "Progressing"
    assert ("Normal", "Adopted", f"took over existing endpoint {ENDPOINT}") in h.events


def test_delete_waits_for_sagemaker_then_removes_endpoint_configs_and_models() -> None:
    h = Harness(applied())
    h.create_and_serve()
    model, config = names_for(h.md)
    h.describe("Updating", config["EndpointConfigName"])
    h.expect("list_tags", {"ResourceArn": ARN}, {"Tags": render.tags(h.md)})
    with pytest.raises(DeletionPending, match="is Updating"):
        h.reconciler.delete(h.md)
    h.stub.assert_no_pending_responses()  # and no DeleteEndpoint

    h.describe("InService", config["EndpointConfigName"])
    h.expect("list_tags", {"ResourceArn": ARN}, {"Tags": render.tags(h.md)})
    h.expect("delete_endpoint", {"EndpointName": ENDPOINT})
    h.describe("Deleting", config["EndpointConfigName"])
    with pytest.raises(DeletionPending, match="waiting for SageMaker to delete"):
        h.reconciler.delete(h.md)

    h.describe("Deleting", config["EndpointConfigName"])
    h.expect("list_tags", {"ResourceArn": ARN}, {"Tags": render.tags(h.md)})
    h.describe("Deleting", config["EndpointConfigName"])
    with pytest.raises(DeletionPending):
        h.reconciler.delete(h.md)

    h.missing()
    h.listed([config["EndpointConfigName"]], [model["ModelName"]], keep=False)
    h.reconciler.delete(h.md)
    h.stub.assert_no_pending_responses()


def test_retain_policy_deletes_nothing() -> None:
    h = Harness(applied())
    h.create_and_serve()
    data = h.md.to_dict()
    data["metadata"]["annotations"] = {"mlplane.dev/deletion-policy": "retain"}
    h.reconciler.delete(ModelDeployment.model_validate(data))  # no AWS call scripted, none made


def test_an_endpoint_url_the_operator_does_not_allow_is_refused_before_any_call() -> None:
    """The operator sends signed requests, with the tenant's credentials, wherever the URL
    points: an endpoint not in its sagemaker_endpoint_urls is never called, not even to delete."""
    h = Harness(applied(endpointUrl="https://sagemaker.attacker.example"))
    status = h.step().status  # the strict Stubber has no answers: any call would fail the test
    assert status.phase == "Failed"
    reason, message = h.cond("Ready")[1:]
    assert reason == "InvalidSpec"
    assert message.startswith(
        "spec.sagemaker.endpointUrl: 'https://sagemaker.attacker.example' is not an endpoint this "
        "operator may call (sagemaker_endpoint_urls: none)"
    )
    assert h.secrets_read == []
    h.reconciler.delete(h.md)
