"""The Serve application config: a pure rendering of the resource and its resolved models."""

from mlplane.crds.modeldeployment import DEFAULT_MAX_REQUEST_BYTES, ModelDeployment
from mlplane.serving.config import (
    COLLECTOR_DEPLOYMENT,
    IMPORT_PATH,
    SERVER_DEPLOYMENT,
    ModelRef,
    app_name,
    canary_percent,
    route_prefix,
    serve_application,
)


def deployment(**ray: object) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "churn", "namespace": "team-a"},
            "spec": {"model": {"uri": "models:/churn@prod"}, "ray": ray},
        }
    )


def server(app: dict) -> dict:
    return next(d for d in app["deployments"] if d["name"] == SERVER_DEPLOYMENT)


def test_defaults_render_one_app_with_route_and_pinned_model() -> None:
    app = serve_application(deployment(), ModelRef("models:/churn/7", "7"))
    assert app["name"] == "team-a.churn" == app_name("team-a", "churn")
    assert app["route_prefix"] == "/team-a/churn"
    assert app["import_path"] == IMPORT_PATH
    assert app["args"] == {
        "stable": {"uri": "models:/churn/7", "version": "7"},
        "canary": None,
        "maxBatchSize": 32,
        "batchWaitTimeoutS": 0.005,
        "maxBodyBytes": DEFAULT_MAX_REQUEST_BYTES,
    }
    assert "runtime_env" not in app
    assert [d["name"] for d in app["deployments"]] == [SERVER_DEPLOYMENT, COLLECTOR_DEPLOYMENT]
    assert server(app)["user_config"] == {"canaryPercent": 0}
    assert server(app)["max_surge_percent"] == 100


def test_autoscaling_resources_batching_and_route_map_onto_serve_options() -> None:
    md = deployment(
        replicas={"min": 2, "max": 8, "targetOngoingRequests": 4},
        perReplica={"cpu": "500m", "memory": "2Gi", "gpu": 1},
        batching={"maxBatchSize": 64, "timeoutMs": 20},
        routePrefix="/churn",
    )
    app = serve_application(md, ModelRef("s3://bucket/model"), env={"B": "2", "A": "1"})
    assert app["route_prefix"] == "/churn" == route_prefix(md)
    assert app["args"]["maxBatchSize"] == 64
    assert app["args"]["batchWaitTimeoutS"] == 0.02
    assert app["runtime_env"] == {"env_vars": {"A": "1", "B": "2"}}
    s = server(app)
    assert s["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 8,
        "target_ongoing_requests": 4.0,
    }
    assert s["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0, "memory": 2 * 1024**3}
    # A replica holds two full batches of single-row requests: one predicting, one filling.
    assert s["max_ongoing_requests"] == 128


def test_node_pool_becomes_a_label_selector_only_when_the_backend_names_the_label() -> None:
    md = deployment(nodePool="a100")
    plain = serve_application(md, ModelRef("models:/churn/7", "7"))
    placed = serve_application(
        md, ModelRef("models:/churn/7", "7"), node_pool_label="ray.io/node-group"
    )
    assert "label_selector" not in server(plain)["ray_actor_options"]
    assert server(placed)["ray_actor_options"]["label_selector"] == {"ray.io/node-group": "a100"}


def test_canary_is_an_init_arg_and_its_share_is_user_config() -> None:
    stable, candidate = ModelRef("models:/churn/7", "7"), ModelRef("models:/churn/8", "8")
    at_10 = serve_application(deployment(), stable, candidate, 10)
    at_50 = serve_application(deployment(), stable, candidate, 50)
    assert at_10["args"]["canary"] == {"uri": "models:/churn/8", "version": "8"}
    assert canary_percent(at_10) == 10
    assert canary_percent(at_50) == 50
    # Moving a step changes only user_config, which Serve applies without restarting replicas.
    assert at_10["args"] == at_50["args"]
    assert canary_percent(serve_application(deployment(), stable, None, 50)) == 0


def test_the_request_body_limit_is_an_init_arg_of_the_replicas() -> None:
    assert DEFAULT_MAX_REQUEST_BYTES == 4 * 1024 * 1024
    app = serve_application(deployment(maxRequestBytes=65536), ModelRef("models:/churn/7", "7"))
    assert app["args"]["maxBodyBytes"] == 65536


def test_rendering_is_deterministic() -> None:
    md = deployment()
    ref = ModelRef("models:/churn/7", "7")
    assert serve_application(md, ref, env={"X": "1"}) == serve_application(md, ref, env={"X": "1"})
