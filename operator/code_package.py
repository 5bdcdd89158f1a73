"""`mlplane package`: a manifest's local code, shipped as the remote archives Ray fetches.

Ray pods KubeRay runs cannot read the user's disk, and the operator never reads paths on its own,
so on a cluster `runtimeEnv.workingDir` and `pyModules` name remote `.zip` archives. This zips each
local directory a manifest names, uploads it to S3 and gives back the manifest with the archives'
URIs in place of the paths, as `aws cloudformation package` does for a template's local artifacts.

An archive holds one top-level directory, which Ray strips when it unpacks a remote archive: for a
workingDir it wraps the directory's contents, for a pyModules entry the package directory itself,
so the package lands on the module path. The archive is named by its content's hash: Ray caches
archives on each node by URI, so changed code must get a new URI, and unchanged code is uploaded
once.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

RUNTIME_ENV_PATHS = {"TrainingJob": ("spec",), "TuningSweep": ("spec", "template")}
"""Where each kind's training spec (and so its `runtimeEnv`) sits."""

SKIPPED = frozenset({"__pycache__", ".git", ".venv", ".ipynb_checkpoints"})
"""Directory names never packaged: caches and checkouts, not code."""

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
"""zip's earliest timestamp, on every entry: equal code gives equal bytes, hence an equal URI."""


class PackageError(ValueError):
    """A path the manifest names cannot be packaged or uploaded; the message names the field."""


def is_local(uri: str) -> bool:
    """Whether a runtimeEnv entry is a path on this machine rather than a remote archive."""
    return "://" not in uri or uri.startswith("file://")


def archive(directory: Path, as_module: bool) -> bytes:
    """A zip of `directory` as Ray unpacks a remote one (see the module docstring)."""
    top = directory.name or "code"
    inside = f"{top}/{top}" if as_module else top
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in _files(directory):
            entry = zipfile.ZipInfo(f"{inside}/{path.relative_to(directory).as_posix()}", ZIP_EPOCH)
            entry.external_attr = (path.stat().st_mode & 0o777) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zipped.writestr(entry, path.read_bytes())
    return buffer.getvalue()


def _files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            if path.name not in SKIPPED:
                yield from _files(path)
        elif path.is_file() and path.suffix != ".pyc":
            yield path


def archive_key(prefix: str, directory: Path, data: bytes) -> str:
    """The object key of `data`: under `prefix`, named after the directory and its hash."""
    digest = hashlib.sha256(data).hexdigest()[:20]
    name = f"{directory.name or 'code'}-{digest}.zip"
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


Upload = Callable[[str, bytes], None]
"""Stores `data` under a key (of the destination bucket) unless it is there already."""


@dataclass(frozen=True)
class Destination:
    """An `s3://bucket/prefix` archives go to."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> Destination:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise PackageError(f"{uri!r} is not an s3://bucket/prefix URI")
        return cls(parsed.netloc, parsed.path.strip("/"))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class Packager:
    """Uploads the local code of manifests to `destination`; relative paths are from `base`."""

    destination: Destination
    upload: Upload
    base: Path

    def documents(self, documents: list[Any]) -> list[Any]:
        """`documents` with every local workingDir and pyModules entry replaced by the URI of its
        uploaded archive; other kinds and remote entries pass unchanged."""
        for document in documents:
            runtime_env, field = _runtime_env(document)
            if runtime_env is None:
                continue
            name = (document.get("metadata") or {}).get("name", "?")
            where = f"{document['kind']}/{name}: {field}"
            if isinstance(runtime_env.get("workingDir"), str):
                runtime_env["workingDir"] = self._ship(
                    f"{where}.workingDir", runtime_env["workingDir"], as_module=False
                )
            modules = runtime_env.get("pyModules")
            if isinstance(modules, list):
                runtime_env["pyModules"] = [
                    self._ship(f"{where}.pyModules[{i}]", m, as_module=True)
                    if isinstance(m, str)
                    else m
                    for i, m in enumerate(modules)
                ]
        return documents

    def file(self, path: Path) -> str:
        """The manifest at `path` as YAML, its local code uploaded."""
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        return yaml.safe_dump_all(self.documents(documents), sort_keys=False)

    def _ship(self, field: str, value: str, as_module: bool) -> str:
        if not is_local(value):
            return value
        directory = (self.base / value.removeprefix("file://")).resolve()
        if not directory.is_dir():
            raise PackageError(f"{field}: {value!r} is not a directory")
        data = archive(directory, as_module)
        key = archive_key(self.destination.prefix, directory, data)
        self.upload(key, data)
        return self.destination.uri(key)


def _runtime_env(document: Any) -> tuple[dict[str, Any] | None, str]:
    """The document's runtimeEnv (None for other kinds, or none set) and its field path."""
    path = RUNTIME_ENV_PATHS.get(document.get("kind", "")) if isinstance(document, dict) else None
    if path is None:
        return None, ""
    node: Any = document
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    found = node.get("runtimeEnv") if isinstance(node, dict) else None
    return (found if isinstance(found, dict) else None), ".".join([*path, "runtimeEnv"])


def s3_upload(bucket: str) -> Upload:
    """Upload to `bucket` with boto3's own credentials and endpoint (AWS_ENDPOINT_URL and the
    like), skipping archives already there: their name is their content."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3")

    def upload(key: str, data: bytes) -> None:
        try:
            try:
                s3.head_object(Bucket=bucket, Key=key)
                return
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as error:
            raise PackageError(f"s3://{bucket}/{key}: {error}") from error

    return upload
