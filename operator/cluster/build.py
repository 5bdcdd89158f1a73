"""Build the control plane's binaries once from their Go modules, into a cache outside the repo.

No container runtime exists on the machines this runs on, so kind/k3d are out; instead every
part is compiled from its published Go module at a pinned version. Compiling Kubernetes takes many
minutes on two cores, so the result is cached per version under `~/.cache/mlplane/k8s-<version>/`
and every later call returns at once. A file lock keeps two sessions from building into the
same directory at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
# The etcd KUBERNETES_VERSION's own go.mod requires: the server the apiserver is tested against.
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.8.0"
# Helm renders and lints the chart in helm/; built like the rest, into its own versioned directory.
HELM_VERSION = "v4.3.1"
# KubeRay's operator runs in the local cluster so the kuberay backend meets the controller users
# run, not a stand-in; its CRDs come from the same module, never written by hand.
KUBERAY_VERSION = "v1.5.0"
# The `go` directive of KUBERNETES_VERSION and KWOK_VERSION; GOTOOLCHAIN=local forbids fetching it.
MINIMUM_GO = (1, 26)

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*KUBERNETES_COMMANDS, "etcd", "kwok")

# kwok runs no lifecycle at all without Stage objects; these are the ones `kwokctl` uses by default
# (fast node start, lease heartbeats, pods Running at once), read from the pinned kwok module itself
# so they always match the binary.
# `kwokctl`'s pod-complete stage is left out: it ends every pod a Job owns at once, so KubeRay's
# submitter would report a Ray job finished that never ran. Pods run until deleted; a test writes
# what the work inside reached.
KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
KWOK_STAGES_NAME = "kwok-stages.yaml"
STAMP_NAME = "parts.json"
LDFLAGS = "-s -w"
PROGRESS_EVERY = 30.0  # seconds between progress lines of a running build


def _kubernetes_ldflags() -> str:
    """Stamp the version the way Kubernetes' own release build does; unstamped binaries report
    `v0.0.0-master`, which `kubectl version`, Helm's `kubeVersion` checks and clients misread."""
    major, minor = KUBERNETES_VERSION.removeprefix("v").split(".")[:2]
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
    }
    stamps = [
        f"-X {package}.{key}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in values.items()
    ]
    return " ".join([LDFLAGS, *stamps])


def _recipe() -> str:
    """Everything that decides the binaries' content; a change rebuilds them all."""
    return json.dumps(
        {
            "kubernetes": KUBERNETES_VERSION,
            "etcd": ETCD_VERSION,
            "kwok": KWOK_VERSION,
            "binaries": BINARIES,
            "kwokStages": KWOK_STAGE_FILES,
            "ldflags": {"kubernetes": _kubernetes_ldflags(), "other": LDFLAGS},
        },
        indent=2,
    )


Log = Callable[[str], None]


class BuildError(RuntimeError):
    """A part could not be built; the message carries the tail of the Go tool's output."""


@dataclass(frozen=True)
class Parts:
    """Where the built binaries live, and what this call built (empty when all were cached)."""

    bin_dir: Path
    kwok_stages: Path
    built: tuple[str, ...]
    seconds: float

    @property
    def cached(self) -> bool:
        """True when nothing was compiled: the promise of every run after the first."""
        return not self.built

    def binary(self, name: str) -> Path:
        """Path of one built command, e.g. `kube-apiserver`."""
        return self.bin_dir / name


def cache_root() -> Path:
    """`$MLPLANE_CACHE_DIR`, else `$XDG_CACHE_HOME/mlplane`, else `~/.cache/mlplane`."""
    if explicit := os.environ.get("MLPLANE_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlplane"


def parts_dir() -> Path:
    """One directory per pinned Kubernetes version: a version bump never reuses stale binaries."""
    return cache_root() / f"k8s-{KUBERNETES_VERSION}"


def find_go() -> Path:
    """A Go tool new enough for the pinned modules: PATH first, then the standard install
    location (often missing from PATH), skipping an older distribution Go."""
    found = shutil.which("go")
    candidates = [Path(found)] if found else []
    candidates.append(Path("/usr/local/go/bin/go"))
    for candidate in candidates:
        if candidate.is_file() and _go_version(candidate) >= MINIMUM_GO:
            return candidate
    raise BuildError(
        "Go >= {}.{} is needed once to build the local control plane (install it from "
        "https://go.dev/dl/ and put `go` on PATH)".format(*MINIMUM_GO)
    )


def _go_version(go: Path) -> tuple[int, int]:
    result = subprocess.run(
        [str(go), "env", "GOVERSION"], capture_output=True, text=True, check=False
    )
    found = re.match(r"go(\d+)\.(\d+)", result.stdout.strip())
    return (int(found[1]), int(found[2])) if found else (0, 0)


def ensure_parts(log: Log = print) -> Parts:
    """Return the cached parts, building whichever are missing first."""
    started = time.monotonic()
    target = parts_dir()
    bin_dir = target / "bin"
    stages = target / KWOK_STAGES_NAME
    if not _missing(target):
        return Parts(bin_dir, stages, (), time.monotonic() - started)
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".lock"):
        # Another process may have finished the build while this one waited for the lock.
        missing = _missing(target)
        if missing:
            log(
                f"building the local control plane ({KUBERNETES_VERSION}, etcd {ETCD_VERSION}, "
                f"kwok {KWOK_VERSION}) into {target}: once per machine, ~10 min on 2 cores"
            )
            (target / STAMP_NAME).unlink(missing_ok=True)
            _build(target, missing, log)
            (target / STAMP_NAME).write_text(_recipe())
        return Parts(bin_dir, stages, tuple(missing), time.monotonic() - started)


@dataclass(frozen=True)
class GoTool:
    """A command-line tool built from one Go module at a pinned version, cached per version."""

    name: str
    module: str
    package: str
    version: str
    ldflags: str = LDFLAGS
    files: tuple[str, ...] = ()
    """Files of the module kept beside the binary (paths inside the module), e.g. its CRDs."""

    @property
    def home(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def binary(self) -> Path:
        return self.home / "bin" / self.name

    def file(self, path: str) -> Path:
        """The cached copy of one of `files`."""
        return self.home / "files" / path

    @property
    def cached(self) -> bool:
        return self.binary.is_file() and all(self.file(path).is_file() for path in self.files)


HELM = GoTool(
    "helm",
    "helm.sh/helm/v4",
    "helm.sh/helm/v4/cmd/helm",
    HELM_VERSION,
    # Stamped as Helm's own release build does; unstamped, `helm version` says only `v4.3`.
    f"{LDFLAGS} -X helm.sh/helm/v4/internal/version.version={HELM_VERSION}",
)


KUBERAY = GoTool(
    "kuberay-operator",
    "github.com/ray-project/kuberay/ray-operator",
    "github.com/ray-project/kuberay/ray-operator",
    KUBERAY_VERSION,
    files=tuple(
        f"config/crd/bases/ray.io_{plural}.yaml"
        for plural in ("rayclusters", "rayjobs", "rayservices")
    ),
)


def ensure_tool(tool: GoTool, log: Log = print) -> tuple[Path, bool]:
    """The tool's binary, and whether this call had to build it (helm: 10 min on a busy
    2-core machine, the first time only)."""
    if tool.cached:
        return tool.binary, False
    tool.home.mkdir(parents=True, exist_ok=True)
    with _locked(tool.home / ".lock"):
        if tool.cached:
            return tool.binary, False
        log(f"building {tool.name} {tool.version} into {tool.home}: once per machine")
        go = find_go()
        module = tool.home / "src"
        _write_module(module, f"{tool.name}build", tool.module, tool.version)
        if tool.files:
            source = _module_source(go, module, tool.module, tool.version)
            for path in tool.files:
                tool.file(path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / path, tool.file(path))
        commands = {tool.name: tool.package}
        _go_build(go, module, tool.binary.parent, commands, tool.ldflags, log)
    return tool.binary, True


def _missing(target: Path) -> list[str]:
    """The binaries to build: all of them when the recipe changed, else those not there yet."""
    stamp = target / STAMP_NAME
    if not stamp.is_file() or stamp.read_text() != _recipe():
        return list(BINARIES)
    if not (target / KWOK_STAGES_NAME).is_file():
        return ["kwok"]
    return [name for name in BINARIES if not (target / "bin" / name).is_file()]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(target: Path, missing: list[str], log: Log) -> None:
    go = find_go()
    bin_dir = target / "bin"
    bin_dir.mkdir(exist_ok=True)
    src = target / "src"
    wanted_k8s = [name for name in KUBERNETES_COMMANDS if name in missing]
    if wanted_k8s:
        module = src / "kubernetes"
        _write_module(module, "k8sbuild", "k8s.io/kubernetes", KUBERNETES_VERSION)
        _pin_staging_modules(go, module)
        commands = {name: f"k8s.io/kubernetes/cmd/{name}" for name in wanted_k8s}
        _go_build(go, module, bin_dir, commands, _kubernetes_ldflags(), log)
    if "etcd" in missing:
        module = src / "etcd"
        _write_module(module, "etcdbuild", "go.etcd.io/etcd/server/v3", ETCD_VERSION)
        _go_build(go, module, bin_dir, {"etcd": "go.etcd.io/etcd/server/v3"}, LDFLAGS, log)
    if "kwok" in missing:
        module = src / "kwok"
        _write_module(module, "kwokbuild", "sigs.k8s.io/kwok", KWOK_VERSION)
        _go_build(go, module, bin_dir, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, LDFLAGS, log)
        _write_kwok_stages(go, target / KWOK_STAGES_NAME)


def _write_module(module: Path, name: str, requires: str, version: str) -> None:
    """A throwaway main module whose only job is to pin one dependency."""
    module.mkdir(parents=True, exist_ok=True)
    (module / "go.mod").write_text(
        f"module mlplane.local/{name}\n\ngo 1.26.0\n\nrequire {requires} {version}\n"
    )


def _pin_staging_modules(go: Path, module: Path) -> None:
    """Point every `k8s.io/*` staging module at its published `v0.X.Y` twin.

    `k8s.io/kubernetes` requires its staging modules at `v0.0.0` and resolves them with `replace`
    lines into its own tree; replace lines of a dependency are ignored, so the main module has to
    say the same thing with the published versions.
    """
    info = _go_json(
        go, module, ["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"]
    )
    gomod = Path(info["GoMod"]).read_text()
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) => \./staging/", gomod, re.MULTILINE)))
    required = set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0\s*$", gomod, re.MULTILINE))
    published = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
    lines = [f"\t{path} => {path} {published}" for path in staging if path in required]
    with (module / "go.mod").open("a") as handle:
        handle.write("\nreplace (\n" + "\n".join(lines) + "\n)\n")


def _module_source(go: Path, cwd: Path, module: str, version: str) -> Path:
    """The files of `module@version`, in Go's module cache (downloaded there if needed)."""
    return Path(_go_json(go, cwd, ["mod", "download", "-json", f"{module}@{version}"])["Dir"])


def _write_kwok_stages(go: Path, destination: Path) -> None:
    source = _module_source(go, destination.parent, "sigs.k8s.io/kwok", KWOK_VERSION)
    docs = [(source / name).read_text().strip() for name in KWOK_STAGE_FILES]
    partial = destination.with_suffix(".partial")
    partial.write_text("\n---\n".join(docs) + "\n")
    partial.replace(destination)


def _go_env() -> dict[str, str]:
    """Module mode even without go.sum entries, the local toolchain only, no VCS stamping."""
    return {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "GOTOOLCHAIN": "local"}


def _go_json(go: Path, cwd: Path, args: list[str]) -> dict[str, str]:
    result = subprocess.run(
        [str(go), *args], cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(f"go {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout)


def _go_build(
    go: Path, module: Path, bin_dir: Path, commands: dict[str, str], ldflags: str, log: Log
) -> None:
    """Build `{binary name: package}` into a side directory first, so an interrupted build never
    leaves a half-written binary that would later pass for cached."""
    names = ", ".join(commands)
    log(f"  go build {names} ...")
    started = time.monotonic()
    staging = bin_dir / ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # With one package `-o` names the file; with several it names a directory and each binary is
    # named after its package's last path element (which is the command name for k8s.io/kubernetes).
    output = str(staging / next(iter(commands))) if len(commands) == 1 else f"{staging}/"
    # `-v` names each package as it is compiled: counted, it is the progress report of a build
    # that otherwise prints nothing for ten minutes.
    argv = [str(go), "build", "-v", "-trimpath", f"-ldflags={ldflags}", "-o", output]
    with subprocess.Popen(
        [*argv, *commands.values()],
        cwd=module,
        env=_go_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        tail: deque[str] = deque(maxlen=60)
        compiled, reported = 0, time.monotonic()
        for line in process.stderr:
            tail.append(line.rstrip())
            compiled += not line.startswith("go: ")
            if time.monotonic() - reported >= PROGRESS_EVERY:
                reported = time.monotonic()
                log(f"    {compiled} packages compiled, {reported - started:.0f}s")
    if process.returncode != 0:
        raise BuildError(f"go build {names} failed:\n" + "\n".join(tail))
    for name in commands:
        (staging / name).replace(bin_dir / name)
    staging.rmdir()
    log(f"  built {names} in {time.monotonic() - started:.0f}s")
