"""The executor plug-in point: what the solver needs to run one RUN step.

An :class:`Executor` runs a :class:`~kiln.executor.spec.RunSpec` (root filesystem,
process, mounts) to completion, streaming its output line by line, and can stop every
step it is running when the build fails. :class:`~kiln.executor.runc.RuncExecutor`
(runc or crun) is the one implementation; the solver knows only this protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kiln.executor.spec import RunSpec

OutputSink = Callable[[str], None]


class Executor(Protocol):
    def run(self, spec: RunSpec, output: OutputSink, *, description: str) -> None:
        """Run *spec*; raise :class:`~kiln.errors.StepFailedError` when it fails."""
        ...

    @property
    def cancelled(self) -> bool:
        """True once :meth:`kill_all` was called: no new step may start."""
        ...

    def kill_all(self) -> None:
        """Stop every running step and refuse to start new ones (a failed build)."""
        ...
