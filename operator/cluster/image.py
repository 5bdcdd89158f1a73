"""Build the mlplane image (the kuberay backend's default `ray_image`) without a Docker daemon.

`make image` (`python -m mlplane.operator.cluster.image`) writes `dist/mlplane-<version>-oci.tar`,
an OCI archive `skopeo copy` pushes to any registry. It is built from Debian's packages
(mmdebstrap) and the locked wheels already in uv's cache (uv, inside the new root filesystem),
made an OCI image by umoci and archived by skopeo: all Debian packages, installed here on first
use.

Three layers: Debian, the locked packages (gigabytes: the lock's torch brings CUDA's wheels) and
mlplane's wheel. The first two take minutes and change only with the lock, so they are cached as
an OCI layout under `~/.cache/mlplane/image/base-<key>/`, keyed by this recipe and
requirements.lock. The archive is cached beside it under `<key>/`, keyed by those, pyproject.toml
and the mlplane sources: a source change costs the third layer and the archive, seconds and not
minutes; no change builds nothing. Older entries are removed: one image per machine.

Needs root, as mmdebstrap, apt-get and chroot do.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlplane.operator.backends.kuberay import RAY_GID, RAY_UID
from mlplane.operator.cluster.build import BuildError, Log, _locked, cache_root

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dist"
LOCK = REPO / "requirements.lock"
# The folders that become mlplane's subpackages (pyproject.toml's package-dir).
PACKAGE_DIRS = ("operator", "crds", "training", "serving")

DEBIAN_SUITE = "bookworm"  # Python 3.11, the version the lock is compiled for
DEBIAN_PACKAGES = (
    "python3.11",
    "ca-certificates",
    # OpenMP's runtime, which xgboost's wheel links against without shipping it.
    "libgomp1",
    # KubeRay's default readiness and liveness probes run `wget` against the raylet.
    "wget",
)
# Debian package of each command the build runs on this machine, and of runc, which runs the
# image's root filesystem here (the test does, a user trying the image may).
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "umoci": "umoci", "skopeo": "skopeo", "runc": "runc"}

VENV = "/opt/mlplane"
USER = "ray"  # Ray's official images' user: the same uid and gid KubeRay's pods run as
HOME = f"/home/{USER}"
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where, inside the root filesystem, the build's own files (uv, the lock, the wheel) and uv's
# cache are visible while it installs; removed before the filesystem becomes a layer.
BUILD_DIR = "/tmp/mlplane-build"
UV_CACHE_MOUNT = "/var/cache/uv"
# Tags of the cached base layout: Debian alone, and with the locked packages.
DEBIAN_TAG, PYTHON_TAG = "debian", "python"


def _recipe() -> dict[str, object]:
    """What decides the image besides the lock and the sources; a change rebuilds it."""
    return {
        "suite": DEBIAN_SUITE,
        "packages": DEBIAN_PACKAGES,
        "venv": VENV,
        "user": [USER, RAY_UID, RAY_GID],
        "path": PATH,
    }


def version() -> str:
    return importlib.metadata.version("mlplane")


def archive_name() -> str:
    return f"mlplane-{version()}-oci.tar"


def base_key() -> str:
    """sha256 of the recipe and the lock: what decides the Debian and Python layers."""
    digest = hashlib.sha256(json.dumps(_recipe(), sort_keys=True).encode())
    digest.update(LOCK.read_bytes())
    return digest.hexdigest()[:16]


def content_key() -> str:
    """The base key, pyproject.toml and every file mlplane's wheel carries: the whole image."""
    digest = hashlib.sha256(base_key().encode())
    sources = [REPO / "pyproject.toml"]
    for folder in PACKAGE_DIRS:
        sources += sorted(
            path
            for path in (REPO / folder).rglob("*")
            if path.suffix in {".py", ".yaml"} and "__pycache__" not in path.parts
        )
    for path in sources:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """The built archive, and whether this call built it."""

    archive: Path
    built: bool
    seconds: float


def ensure_image(log: Log = print) -> Image:
    """The cached archive of the current sources, building it first when there is none."""
    started = time.monotonic()
    key = content_key()
    home = cache_root() / "image"
    archive = home / key / archive_name()
    if archive.is_file():
        return Image(archive, False, time.monotonic() - started)
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (apt-get, mmdebstrap and chroot)")
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        # Another process may have built it while this one waited for the lock.
        if not archive.is_file():
            log(f"building the mlplane image {version()} ({key}) into {archive.parent}")
            install_host_tools(log)
            base = _ensure_base(home, log)
            with _work_dir(home / f"{key}.partial") as work:
                _build_image(base, work, archive, log)
            _remove_other_entries(home, keep={key, base.name})
        return Image(archive, True, time.monotonic() - started)


def write_dist(image: Image) -> Path:
    """`dist/mlplane-<version>-oci.tar`: a hard link to the cached archive (a copy across
    filesystems), replaced atomically."""
    DIST.mkdir(exist_ok=True)
    target = DIST / archive_name()
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(image.archive, partial)
    except OSError:
        shutil.copyfile(image.archive, partial)
    partial.replace(target)
    return target


def install_host_tools(log: Log) -> None:
    """apt-get install the Debian packages of whichever build commands are missing."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BuildError(f"building the image needs root (apt-get install {' '.join(missing)})")
    log(f"  apt-get install {' '.join(missing)}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=environment)
    _run(["apt-get", "install", "-y", "-qq", *missing], env=environment)


@contextmanager
def _work_dir(path: Path) -> Iterator[Path]:
    """A fresh build directory, removed however the build ends."""
    _remove_tree(path)
    path.mkdir()
    try:
        yield path
    finally:
        _remove_tree(path)


def _ensure_base(home: Path, log: Log) -> Path:
    """The OCI layout holding the Debian layer (tag `debian`) and the locked packages' layer on
    it (tag `python`): the minutes of a build, redone only when the lock or the recipe change."""
    target = home / f"base-{base_key()}"
    if not target.is_dir():
        with _work_dir(target.with_suffix(".partial")) as work:
            _build_base(work, log)
            shutil.rmtree(work / "bundle")
            (work / "oci").rename(target)
    return target


def _build_base(work: Path, log: Log) -> None:
    layout = work / "oci"
    bundle = work / "bundle"
    rootfs = bundle / "rootfs"
    _run(["umoci", "init", "--layout", str(layout)])
    _run(["umoci", "new", "--image", f"{layout}:{DEBIAN_TAG}"])
    _run(["umoci", "unpack", "--image", f"{layout}:{DEBIAN_TAG}", str(bundle)])
    # mmdebstrap fills an empty directory; umoci's is one, and records what it held.
    _step(log, f"mmdebstrap {DEBIAN_SUITE}", _mmdebstrap(rootfs))
    _step(log, f"useradd {USER}", ["chroot", str(rootfs), *_useradd()])
    # A login shell (KubeRay's, with ENABLE_LOGIN_SHELL) resets PATH from /etc/profile.
    (rootfs / "etc/profile.d/mlplane.sh").write_text(f'export PATH="{PATH}"\n')
    # mmdebstrap copied this machine's resolver for apt; a pod gets its own from the kubelet.
    (rootfs / "etc/resolv.conf").write_text("")
    repack = ["nice", "-n10", "umoci", "repack", "--refresh-bundle", "--image"]
    _step(log, "umoci repack (Debian)", [*repack, f"{layout}:{DEBIAN_TAG}", str(bundle)])
    _install_locked_packages(rootfs, log)
    _step(log, "umoci repack (Python)", [*repack, f"{layout}:{PYTHON_TAG}", str(bundle)])


def _build_image(base: Path, work: Path, archive: Path, log: Log) -> None:
    """mlplane's wheel as a third layer on the base, the image's config, the archive.

    The wheel is installed into a venv at the same path on the Debian layer alone (seconds to
    unpack, not the minutes of the Python layer), so its files, `#!` line and bytecode are the
    image's; only those files become the layer."""
    rootfs = work / "rootfs"
    _run(["umoci", "raw", "unpack", "--image", f"{base}:{DEBIAN_TAG}", str(rootfs)])
    uv = Path(sys.executable).parent / "uv"
    build = rootfs / BUILD_DIR.lstrip("/")
    build.mkdir(parents=True)
    shutil.copy2(uv, build / "uv")
    _step(
        log,
        "uv build mlplane",
        [str(uv), "build", "--quiet", "--wheel", "--out-dir", str(build), str(REPO)],
    )
    (wheel,) = build.glob("mlplane-*.whl")
    install = (
        f"/usr/bin/python3.11 -m venv --without-pip {VENV} && {BUILD_DIR}/uv pip install --quiet "
        f"--no-cache --python {VENV}/bin/python --no-deps --compile-bytecode "
        f"{BUILD_DIR}/{wheel.name}"
    )
    _step(log, "uv pip install mlplane", ["chroot", str(rootfs), "sh", "-c", install])
    site = f"{VENV}/lib/python3.11/site-packages".lstrip("/")
    installed = [f"{VENV.lstrip('/')}/bin/mlplane", f"{site}/mlplane"]
    installed += [str(path.relative_to(rootfs)) for path in (rootfs / site).glob("mlplane-*")]
    layer = work / "mlplane-layer.tar"
    _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(layer), *installed])
    tag = archive.parent.name  # the content key
    tagged = f"{base}:{tag}"
    try:
        _run(
            [
                "umoci",
                "raw",
                "add-layer",
                "--image",
                f"{base}:{PYTHON_TAG}",
                "--tag",
                tag,
                str(layer),
            ]
        )
        _run(["umoci", "config", "--image", tagged, *_image_config()])
        partial = archive.with_suffix(".partial")
        archive.parent.mkdir(exist_ok=True)
        partial.unlink(missing_ok=True)
        _step(
            log,
            "skopeo copy",
            [
                "nice",
                "-n10",
                "skopeo",
                "copy",
                f"oci:{tagged}",
                f"oci-archive:{partial}:mlplane:{version()}",
            ],
        )
    finally:
        # The base keeps only its own two tags; the layer and config are in the archive now
        # (or the build failed before the tag existed, which is why rm may fail).
        subprocess.run(["umoci", "rm", "--image", tagged], capture_output=True, check=False)
        _run(["umoci", "gc", "--layout", str(base)])
    partial.replace(archive)


def _mmdebstrap(rootfs: Path) -> list[str]:
    return [
        "nice",
        "-n10",
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--quiet",
        f"--include={','.join(DEBIAN_PACKAGES)}",
        DEBIAN_SUITE,
        str(rootfs),
    ]


def _useradd() -> list[str]:
    return [
        "useradd",
        "--uid",
        str(RAY_UID),
        "--gid",
        str(RAY_GID),
        "--create-home",
        "--shell",
        "/bin/bash",
        USER,
    ]


def _install_locked_packages(rootfs: Path, log: Log) -> None:
    """A venv at VENV with exactly the lock's packages; uv runs inside the root filesystem, so
    every path it writes (the scripts' `#!` lines) is the image's, and reads the wheels from
    this machine's uv cache."""
    build = rootfs / BUILD_DIR.lstrip("/")
    build.mkdir(parents=True)
    uv = Path(sys.executable).parent / "uv"
    shutil.copy2(uv, build / "uv")
    shutil.copyfile(LOCK, build / "requirements.lock")
    environment = {**os.environ, "UV_CACHE_DIR": UV_CACHE_MOUNT}
    # This machine's CA bundle: it trusts whatever proxy stands between it and PyPI.
    certificates = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().cafile
    if certificates:
        shutil.copyfile(certificates, build / "ca.crt")
        environment["SSL_CERT_FILE"] = f"{BUILD_DIR}/ca.crt"
    (rootfs / UV_CACHE_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    install = (
        f"/usr/bin/python3.11 -m venv --without-pip {VENV} && {BUILD_DIR}/uv pip sync --quiet "
        f"--python {VENV}/bin/python --link-mode=copy --compile-bytecode "
        f"{BUILD_DIR}/requirements.lock"
    )
    # A private mount namespace: the bind mounts of uv's cache and of this machine's resolver
    # end with the command, so nothing later (an interrupted build's cleanup included) can
    # reach the cache through rootfs, and the image keeps no resolver of this machine's.
    _step(
        log,
        "uv pip sync (from uv's cache)",
        [
            "nice",
            "-n10",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind "$0" "$1{UV_CACHE_MOUNT}" && mount --bind /etc/resolv.conf '
            f'"$1/etc/resolv.conf" && exec chroot "$1" sh -c "$2"',
            str(_uv_cache_dir(uv)),
            str(rootfs),
            install,
        ],
        env=environment,
    )
    shutil.rmtree(build)
    (rootfs / UV_CACHE_MOUNT.lstrip("/")).rmdir()


def _uv_cache_dir(uv: Path) -> Path:
    return Path(_run([str(uv), "cache", "dir"]).strip())


def _image_config() -> list[str]:
    """What a Ray pod's container starts with. KubeRay replaces the command with
    `/bin/bash -c -- "ulimit -n 65536; ray start …"`, so the image needs bash and `ray` on
    PATH, and no entrypoint that would wrap it."""
    return [
        f"--config.user={RAY_UID}:{RAY_GID}",
        f"--config.env=PATH={PATH}",
        f"--config.env=HOME={HOME}",
        "--config.env=LANG=C.UTF-8",
        f"--config.workingdir={HOME}",
        "--config.cmd=/bin/bash",
        f"--config.label=org.opencontainers.image.version={version()}",
        "--config.label=org.opencontainers.image.title=mlplane",
    ]


def _step(log: Log, what: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    started = time.monotonic()
    _run(argv, env=env)
    log(f"  {what}: {time.monotonic() - started:.0f}s")


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"{' '.join(argv[:6])} … failed ({result.returncode}):\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    return result.stdout


def _remove_tree(path: Path) -> None:
    """Remove a build directory, refusing if anything is still mounted under it."""
    if not path.exists():
        return
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(point == str(path) or point.startswith(f"{path}/") for point in mounted):
        raise BuildError(f"{path} still has a file system mounted under it; not removing it")
    shutil.rmtree(path)


def _remove_other_entries(home: Path, keep: set[str]) -> None:
    """One image per machine: archives of older sources, a base of an older lock (or an
    interrupted build of either, as builds run under the lock) are gigabytes nobody will run."""
    for entry in home.iterdir():
        if entry.is_dir() and entry.name not in keep:
            _remove_tree(entry)


def main() -> None:
    try:
        image = ensure_image(lambda line: print(line, file=sys.stderr, flush=True))
    except BuildError as error:
        print(error, file=sys.stderr)
        raise SystemExit(1) from error
    target = write_dist(image)
    state = f"built in {image.seconds:.0f}s" if image.built else "cached"
    print(f"{target} ({target.stat().st_size / 2**30:.2f} GiB, {state})", file=sys.stderr)


if __name__ == "__main__":
    main()
