"""Run one step in a container through an OCI runtime (runc, or crun).

The runtime is given a generated bundle (``config.json``) and the step's network
(:mod:`kiln.executor.network`), its output is streamed line by line to the caller, and
mount points the runtime had to create in the root filesystem are removed afterwards so
they do not leak into the step's layer. Steps die with kiln: the runtime gets a
parent-death signal, its container is killed by the watchdog
(:mod:`kiln.executor.watchdog`) and, should that be gone too, by the next kiln's sweep
(:func:`kiln.state.sweep_stale_sessions`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import threading
import uuid
from collections import deque
from pathlib import Path

from kiln.errors import RuntimeFailure, StepFailedError
from kiln.executor.base import OutputSink
from kiln.executor.network import step_network
from kiln.executor.paths import resolve_in_root
from kiln.executor.spec import RunSpec, runtime_spec
from kiln.executor.watchdog import Watchdog
from kiln.state import RUNTIME_ROOT, KilnRoot, container_prefix
from kiln.timing import timed

_STATE_ROOT = str(RUNTIME_ROOT)
TAIL_LINES = 12


def find_runtime() -> str:
    wanted = os.environ.get("KILN_RUNTIME")
    for name in [wanted] if wanted else ["runc", "crun"]:
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if path:
            return path
    raise RuntimeFailure(
        "no OCI runtime found (runc or crun)",
        hint="install one: apt-get install -y runc",
    )


class RuncExecutor:
    def __init__(self, root: KilnRoot, runtime: str | None = None) -> None:
        self.root = root
        self.runtime = runtime or find_runtime()
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._cancelled = False
        self._watchdog: Watchdog | None = None
        # the runtime dies with the thread of kiln that waits for it (setpriv, not a
        # preexec_fn: kiln has threads); its container is the watchdog's
        setpriv = shutil.which("setpriv")
        self._launcher = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []

    @timed("run")
    def run(self, spec: RunSpec, output: OutputSink, *, description: str) -> None:
        """Run *spec*; raise :class:`StepFailedError` with the output's tail on failure."""
        bundle = self.root.tempdir("bundle-")
        # named after this process's session: a later kiln sweeps it if this one is killed
        container_id = container_prefix(self.root.tmp) + uuid.uuid4().hex[:12]
        stubs = _missing_mount_points(spec)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            with step_network(spec.network, bundle) as net:
                config = runtime_spec(spec, netns=net.netns, etc_files=net.files)
                (bundle / "config.json").write_text(json.dumps(config))
                code = self._run_container(container_id, bundle, output, tail)
        finally:
            with self._lock:
                self._running.discard(container_id)
            self._delete(container_id)
            with self._lock:
                if self._watchdog is not None:
                    self._watchdog.release(container_id)
            shutil.rmtree(bundle, ignore_errors=True)
            _remove_stubs(spec.rootfs, stubs)
        if code != 0:
            raise StepFailedError(
                f'process "{" ".join(spec.args)}" did not complete successfully: exit code: {code}',
                why=f"{description} failed; last lines of its output:\n"
                + "\n".join(f"  {line}" for line in tail)
                if tail
                else f"{description} failed with no output",
            )

    def _run_container(
        self, container_id: str, bundle: Path, output: OutputSink, tail: deque[str]
    ) -> int:
        cmd = [*self._launcher, self.runtime, "--root", _STATE_ROOT, "run", "--bundle",
               str(bundle), container_id]  # fmt: skip
        with self._lock:
            self._running.add(container_id)
            if self._watchdog is None:
                self._watchdog = Watchdog(self.runtime, RUNTIME_ROOT)
            self._watchdog.watch(container_id)
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {self.runtime}: {exc}") from exc
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                output(line)
            return proc.wait()
        except BaseException:
            self.kill(container_id)
            proc.wait()
            raise

    def kill(self, container_id: str) -> None:
        subprocess.run(
            [self.runtime, "--root", _STATE_ROOT, "kill", container_id, "KILL"],
            capture_output=True,
        )

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def kill_all(self) -> None:
        """Stop every running step and refuse to start new ones (a failed build)."""
        with self._lock:
            self._cancelled = True
            ids = list(self._running)
        for cid in ids:
            self.kill(cid)

    def _delete(self, container_id: str) -> None:
        # ``run`` deletes the container when it ends: only what went wrong is left
        if (RUNTIME_ROOT / container_id).exists():
            subprocess.run(
                [self.runtime, "--root", _STATE_ROOT, "delete", "--force", container_id],
                capture_output=True,
            )


def _mount_destinations(spec: RunSpec) -> list[str]:
    # /proc, /dev and /sys stay when the runtime creates them, as in BuildKit's layers
    dests = ["/etc/resolv.conf", "/etc/hosts"]
    dests += [b.destination for b in spec.binds]
    dests += [t.destination for t in spec.tmpfs]
    return dests


def _missing_mount_points(spec: RunSpec) -> list[str]:
    """Container paths the runtime will create for mount points (missing components of
    every mount destination, outermost first)."""
    created: list[str] = []
    for dest in _mount_destinations(spec):
        parts = [p for p in dest.split("/") if p]
        for i in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:i])
            if path not in created and not os.path.lexists(
                resolve_in_root(spec.rootfs, path, follow_last=False)
            ):
                created.append(path)
    return created


def _remove_stubs(rootfs: Path, created: list[str]) -> None:
    """Undo what the runtime created, innermost first, and only what is still an empty
    directory or an empty regular file: the step's own files are never touched, and
    paths are resolved again (the step may have replaced a directory by a symlink)."""
    for path in sorted(created, key=lambda p: p.count("/"), reverse=True):
        host = resolve_in_root(rootfs, path, follow_last=False)
        try:
            st = os.lstat(host)
        except OSError:
            continue
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(host)  # fails unless empty
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(host)
