"""The CRDs on a real API server: installed, every example accepted, bad objects refused there."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_specs import HOSTILE_SPECS, Hostile
from kubernetes import client
from kubernetes.client.rest import ApiException

from mlplane.crds import KINDS

pytestmark = pytest.mark.cluster

EXAMPLE_DIR = Path(__file__).parents[2] / "examples"
EXAMPLES = sorted(EXAMPLE_DIR.glob("*.yaml"))
# Named one by one, so a new example cannot slip in untested.
EXAMPLE_NAMES = [
    "gpuquota.yaml",
    "modeldeployment-canary.yaml",
    "modeldeployment-ray.yaml",
    "modeldeployment-sagemaker.yaml",
    "nodepool.yaml",
    "trainingjob-custom.yaml",
    "trainingjob-torch.yaml",
    "trainingjob-xgboost.yaml",
    "tuningsweep-xgboost.yaml",
]


def test_every_example_is_listed() -> None:
    assert [p.name for p in EXAMPLES] == EXAMPLE_NAMES


GROUP, VERSION = "mlplane.dev", "v1alpha1"


def _plural(kind: str) -> str:
    return KINDS[kind].plural


def create(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Create `doc` in `namespace`; a cluster-scoped kind's object lives for the test only,
    so that no operator of a later test finds it."""
    objects = client.CustomObjectsApi(api)
    plural = _plural(doc["kind"])
    if KINDS[doc["kind"]].namespaced:
        return objects.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, doc)
    created = objects.create_cluster_custom_object(GROUP, VERSION, plural, doc)
    objects.delete_cluster_custom_object(GROUP, VERSION, plural, doc["metadata"]["name"])
    return created


def rejection(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as raised:
        create(api, namespace, doc)
    assert raised.value.status == 422, raised.value.body
    return json.loads(raised.value.body)["message"]


def job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": "j"},
        "spec": {
            "framework": "xgboost",
            "dataset": {"uri": "sklearn://iris", "label": "target"},
            **spec,
        },
    }


def deployment(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": "d"},
        "spec": {"model": {"uri": "models:/m/1"}, **spec},
    }


def test_crds_are_established(crds: list[str]) -> None:
    assert sorted(crds) == sorted(k.crd_name for k in KINDS.values())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted(
    path: Path, crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    doc = yaml.safe_load(path.read_text())
    created = create(k8s_api, namespace, doc)
    # Nothing the user wrote was pruned: the schema knows every field of the example.
    assert _leaves(doc["spec"]) <= _leaves(created["spec"])


def _leaves(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        return {leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}")}
    if isinstance(node, list):
        return {leaf for i, v in enumerate(node) for leaf in _leaves(v, f"{prefix}[{i}]")}
    if isinstance(node, int | float) and not isinstance(node, bool):
        node = float(node)  # JSON does not keep 1.0 apart from 1
    return {f"{prefix}={node!r}"}


def test_server_applies_defaults(
    crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    created = create(k8s_api, namespace, job())
    assert created["spec"]["retries"] == 0
    assert created["spec"]["priority"] == 0


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (job(retries="three"), "spec.retries"),
        (job(framework="sklearn"), 'spec.framework: Unsupported value: "sklearn"'),
        (job(resources={"workers": -2}), "spec.resources.workers"),
        (
            job(dataset={"uri": "ftp://x/y", "label": "t"}),
            "must start with s3://, file:// or sklearn://",
        ),
        (job(dataset={"uri": "sklearn://mnist", "label": "t"}), "unknown sklearn dataset"),
        (
            job(
                dataset={
                    "uri": "sklearn://iris",
                    "label": "t",
                    "split": {"validation": 0.6, "test": 0.5},
                }
            ),
            "validation + test must be below 1",
        ),
        (job(tracking={"alias": "champion"}), "alias needs registerAs"),
        (job(gates={"auc": "about 0.9"}), "spec.gates.auc"),
        (job(resources={"perWorker": {"memory": "lots"}}), "spec.resources.perWorker.memory"),
        (deployment(ray={"replicas": {"min": 3, "max": 2}}), "min must not exceed max"),
        (
            deployment(canary={"model": {"uri": "models:/m/2"}, "steps": [10, 150]}),
            "spec.canary.steps[1]",
        ),
        (
            deployment(canary={"model": {"uri": "models:/m/2"}, "steps": [50, 10]}),
            "steps must be ascending",
        ),
        (deployment(target="sagemaker"), "target sagemaker needs the sagemaker section"),
        (deployment(model={}), "set exactly one of uri, trainingJobRef"),
    ],
)
def test_api_server_refuses_with_the_rule_message(
    doc: dict[str, Any], words: str, crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    assert words in rejection(k8s_api, namespace, doc)


def test_sweep_search_space_rules(
    crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    sweep = yaml.safe_load(
        (Path(__file__).parents[2] / "examples" / "tuningsweep-xgboost.yaml").read_text()
    )
    for space, words in [
        ({"eta": {"loguniform": {"low": 0, "high": 1}}}, "loguniform needs low > 0"),
        ({"depth": {"uniform": {"low": 5, "high": 1}}}, "low must be below high"),
        ({"depth": {}}, "spec.searchSpace.depth: Invalid value"),
        ({"depth": {"choice": [1], "randint": {"low": 1, "high": 3}}}, "must have at most 1"),
    ]:
        sweep["spec"]["searchSpace"] = space
        assert words in rejection(k8s_api, namespace, sweep)


def test_running_work_cannot_be_changed_but_its_deadline_can(
    crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(k8s_api)
    create(k8s_api, namespace, job(hyperparameters={"eta": 0.1}))
    with pytest.raises(ApiException) as raised:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingjobs", "j", {"spec": {"framework": "torch"}}
        )
    assert raised.value.status == 422
    assert "framework is immutable once created" in raised.value.body
    with pytest.raises(ApiException) as raised:
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "trainingjobs",
            "j",
            {"spec": {"hyperparameters": {"eta": 0.3}}},
        )
    assert "hyperparameters is immutable once created" in raised.value.body
    patched = objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", "j", {"spec": {"activeDeadlineSeconds": 60}}
    )
    assert patched["spec"]["activeDeadlineSeconds"] == 60


def test_status_is_a_subresource(
    crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(k8s_api)
    create(k8s_api, namespace, job())
    # A spec update cannot write status; the status subresource can.
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", "j", {"status": {"phase": "Running"}}
    )
    assert "status" not in objects.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "trainingjobs", "j"
    )
    objects.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "trainingjobs",
        "j",
        {"status": {"phase": "Running", "kopf": {"progress": {"x": 1}}}},
    )
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", "j")
    assert stored["status"]["phase"] == "Running"
    assert stored["status"]["kopf"] == {"progress": {"x": 1}}  # kopf's bookkeeping is kept


@pytest.mark.parametrize(
    "case", [c for c in HOSTILE_SPECS if c.api_server], ids=lambda case: case.id
)
def test_api_server_refuses_every_hostile_spec_naming_the_field(
    case: Hostile, crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    message = rejection(k8s_api, namespace, case.doc)
    assert case.field in message, message


def test_a_gpu_quota_names_each_pool_once_with_a_whole_number_of_gpus(
    crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    def quota(*pools: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GPUQuota",
            "metadata": {"name": "gpus"},
            "spec": {"pools": list(pools)},
        }

    twice = rejection(
        k8s_api, namespace, quota({"name": "a100", "gpus": 8}, {"name": "a100", "gpus": 4})
    )
    assert "spec.pools[1]: Duplicate value" in twice
    negative = rejection(k8s_api, namespace, quota({"name": "a100", "gpus": -1}))
    assert "spec.pools[0].gpus" in negative
    assert "spec.pools" in rejection(k8s_api, namespace, quota())


def test_a_node_pool_selects_its_nodes_and_tolerates_like_a_pod(
    crds: list[str], k8s_api: client.ApiClient, namespace: str
) -> None:
    def pool(**spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodePool",
            "metadata": {"name": "p"},
            "spec": {"nodeSelector": {"mlplane.dev/pool": "a100"}, **spec},
        }

    assert "spec.nodeSelector" in rejection(k8s_api, namespace, pool(nodeSelector={}))
    bad_key = rejection(k8s_api, namespace, pool(nodeSelector={"-pool": "a100"}))
    assert "spec.nodeSelector" in bad_key
    keyless = rejection(k8s_api, namespace, pool(tolerations=[{"effect": "NoSchedule"}]))
    assert "a toleration without a key must be operator Exists" in keyless
    assert "spec.gpuResource" in rejection(k8s_api, namespace, pool(gpuResource="gpu"))
