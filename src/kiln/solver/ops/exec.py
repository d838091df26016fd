"""RUN: the step's process in a container on its mounted root filesystem.

The user is resolved through the image's own passwd/group, the working directory is made
when missing (owned by root, as BuildKit), heredoc scripts and the step's mounts are
bound in, and the executor runs it; everything made for the step is removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from kiln.executor.base import Executor, OutputSink
from kiln.executor.paths import resolve_in_root
from kiln.executor.spec import HostMount, RunSpec
from kiln.executor.users import Identity, resolve_user
from kiln.frontend.base import ExecOp
from kiln.image import env_with
from kiln.solver.ops.file import mkdir_p
from kiln.solver.ops.mounts import RunMounts


def run_exec(op: ExecOp, rootfs: Path, output: OutputSink, *, executor: Executor,
             mounts: RunMounts, scratch: Callable[[str], Path],
             description: str) -> None:  # fmt: skip
    """Run *op* on *rootfs*; *scratch* makes a private directory by name prefix."""
    identity = resolve_user(rootfs, op.user)
    if not resolve_in_root(rootfs, op.workdir).is_dir():
        mkdir_p(rootfs, op.workdir, Identity(0, 0))
    env = env_with(op.env, op.proxy_env, replace=False)
    spec = RunSpec(rootfs, list(op.args), env, op.workdir, identity, op.network)
    with contextlib.ExitStack() as stack:
        folder = scratch("run-")
        stack.callback(shutil.rmtree, folder, True)
        for path, content, mode in op.files:
            host = folder / hashlib.sha256(path.encode()).hexdigest()[:16]
            host.write_text(content)
            host.chmod(mode)
            spec.binds.append(HostMount(host, path, readonly=True))
        mounts.prepare(op, spec, stack, folder)
        executor.run(spec, output, description=description)
