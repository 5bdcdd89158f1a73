"""The local control plane knows its processes by their binary, wherever the cache is linked."""

import shutil
import subprocess
from pathlib import Path

from mlplane.operator.cluster.controlplane import ProcessRecord, _alive


def test_a_binary_started_through_a_symlinked_cache_is_known_as_itself(tmp_path: Path) -> None:
    """A cache directory behind a symlink (a home on another disk): the command line names the
    link, /proc's executable the real file, and both are the process that was started."""
    real = tmp_path / "disk" / "bin"
    real.mkdir(parents=True)
    shutil.copy(shutil.which("sleep") or "/bin/sleep", real / "etcd")
    (tmp_path / "cache").symlink_to(tmp_path / "disk")
    linked = tmp_path / "cache" / "bin" / "etcd"
    process = subprocess.Popen([str(linked), "30"])
    try:
        assert _alive(ProcessRecord("etcd", process.pid, str(linked)))
        assert _alive(ProcessRecord("etcd", process.pid, str(real / "etcd")))
        assert not _alive(ProcessRecord("etcd", process.pid, str(tmp_path / "other")))
    finally:
        process.kill()
        process.wait()
    assert not _alive(ProcessRecord("etcd", process.pid, str(linked)))
