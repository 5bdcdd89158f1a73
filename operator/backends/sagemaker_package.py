"""An MLflow model packaged for SageMaker: model.tar.gz in S3, once per pinned model URI."""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError

from mlplane.operator.backends import sagemaker_render as render
from mlplane.operator.backends.aws import error_code
from mlplane.operator.modeldeployment import ModelNotFound

log = logging.getLogger(__name__)

_LAYOUTS_METADATA = "mlplane-layouts"
_XGBOOST_NATIVE_FILE = "xgboost-model"
# What SageMaker's XGBoost 1.7 container loads from `xgboost-model`: a booster written by
# XGBoost 1.x in the binary or JSON format (newer ones are served by MLflow's pyfunc image).
_XGBOOST_LOADABLE_FORMATS = ("xgb", "json")


class ModelPackager:
    """MLflow model → model.tar.gz in S3, once per pinned model URI.

    The tarball is the MLflow model directory (what MLflow's pyfunc container serves); an XGBoost
    1.x booster in a format SageMaker's XGBoost 1.7 container loads is also copied to
    `xgboost-model`, its file name there. Which layouts the tarball has is stored as object
    metadata, so a restarted operator learns it with one HeadObject instead of a download.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._layouts: dict[str, frozenset[str]] = {}

    def ensure(self, s3: Any, bucket: str, key: str, model_uri: str) -> frozenset[str]:
        """Upload the model unless it is there already; the container layouts it has."""
        url = f"s3://{bucket}/{key}"
        if url in self._layouts:
            return self._layouts[url]
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            layouts = frozenset(
                filter(None, head["Metadata"].get(_LAYOUTS_METADATA, "").split(","))
            )
        except ClientError as error:
            if error_code(error) not in ("404", "NoSuchKey", "NotFound"):
                raise
            layouts = self._upload(s3, bucket, key, model_uri)
        self._layouts[url] = layouts
        return layouts

    def _files_of(self, model_uri: str) -> str:
        """Where a `models:/` URI's files are, asked of the operator's MLflow server: MLflow's
        own resolution of such URIs reads the process's default registry, whatever
        `download_artifacts` is told."""
        if not model_uri.startswith("models:/"):
            return model_uri
        import mlflow  # only SageMaker deployments pay for MLflow's client in the operator
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        client = mlflow.MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        found = get_model_name_and_version(client, model_uri)
        if len(found) == 1:  # models:/<logged model id>
            return client.get_logged_model(found[0]).artifact_location
        return client.get_model_version_download_uri(*found)

    def _upload(self, s3: Any, bucket: str, key: str, model_uri: str) -> frozenset[str]:
        import mlflow.artifacts

        with tempfile.TemporaryDirectory(prefix="mlplane-sagemaker-") as scratch:
            model_dir = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=self._files_of(model_uri),
                    dst_path=str(Path(scratch) / "download"),
                    tracking_uri=self.tracking_uri,
                )
            )
            layouts = serving_layouts(model_dir)
            archive = Path(scratch) / "model.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(model_dir.iterdir()):
                    tar.add(path, arcname=path.name)
            s3.upload_file(
                str(archive),
                bucket,
                key,
                ExtraArgs={"Metadata": {_LAYOUTS_METADATA: ",".join(sorted(layouts))}},
            )
        log.info("packaged %s as s3://%s/%s", model_uri, bucket, key)
        return layouts


def serving_layouts(model_dir: Path) -> frozenset[str]:
    """The layouts the MLflow model in `model_dir` can be served in, adding the files they need."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ModelNotFound(
            f"spec.model: {model_dir.name} is not an MLflow model (no MLmodel file)"
        )
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    layouts = {render.PYFUNC_LAYOUT} if render.PYFUNC_LAYOUT in flavors else set()
    xgb = flavors.get("xgboost") or {}
    booster = model_dir / str(xgb.get("data", ""))
    loadable = xgb.get("model_format", "xgb") in _XGBOOST_LOADABLE_FORMATS
    if loadable and str(xgb.get("xgb_version", "")).startswith("1.") and booster.is_file():
        shutil.copyfile(booster, model_dir / _XGBOOST_NATIVE_FILE)
        layouts.add(render.XGBOOST_LAYOUT)
    return frozenset(layouts)
