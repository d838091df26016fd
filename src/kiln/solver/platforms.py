"""Solving a multi-platform build: one plan per target platform, solved concurrently.

Each platform has its own :class:`~kiln.solver.solver.Solver`; they share the stores and a
:class:`StepGate`, so a step with the same key in two platforms' plans (a
``FROM --platform=$BUILDPLATFORM`` stage whose inputs do not depend on the target) runs
once: the second solver waits for the first and then finds its result in the local store.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from kiln.frontend.base import BuildPlan
from kiln.solver.solver import Solver
from kiln.solver.types import BuildResult


def solve_all(solvers: Sequence[Solver], plans: Sequence[BuildPlan]) -> list[BuildResult]:
    """Each plan solved by its solver, at most as many at once as the machine has cores;
    the first failure stops the others' running steps and is raised."""
    if len(plans) == 1:
        return [solvers[0].solve(plans[0])]
    workers = max(1, min(len(plans), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="platform") as pool:
        futures = [pool.submit(s.solve, p) for s, p in zip(solvers, plans, strict=True)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for solver in solvers:
                solver.runner.executor.kill_all()
            raise
