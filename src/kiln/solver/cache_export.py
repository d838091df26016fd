"""Which steps a cache export holds.

``mode=min`` exports the steps of the final stage and of the stages it is built FROM;
``mode=max`` every step of every stage the target needs — including stages this build did
not have to solve (their results are looked up, so a fully cached build re-exports the
whole cache instead of shrinking it).
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.cache.records import CacheEntry, CacheHit
from kiln.frontend.base import StageBase
from kiln.oci import Layer
from kiln.solver.types import BuildResult

Lookup = Callable[[str], CacheHit | None]


class ExportSelection:
    """The entries of each mode for one build result, selected once per mode (the image
    annotation and every export share them)."""

    def __init__(self, result: BuildResult, lookup: Lookup) -> None:
        self.result = result
        self.lookup = lookup
        self._selected: dict[str, list[CacheEntry]] = {}

    def __call__(self, mode: str) -> list[CacheEntry]:
        if mode not in self._selected:
            self._selected[mode] = select_entries(self.result, self.lookup, mode)
        return self._selected[mode]


def select_entries(result: BuildResult, lookup: Lookup, mode: str) -> list[CacheEntry]:
    plan = result.plan
    if mode == "max":
        stages = plan.needed_order()
    else:
        stages = []
        index: int | None = plan.target
        while index is not None:
            stages.append(index)
            base = plan.stages[index].base
            index = base.stage if isinstance(base, StageBase) else None
    entries: list[CacheEntry] = []
    for index in stages:
        keys = result.keys[index]
        solved = result.stages.get(index)
        known: dict[str, tuple[Layer | None, str]] = {}
        if solved is not None:
            times = {r.key: r.created for r in result.reports if r.step.stage == index}
            for key, layer in solved.step_results:
                known[key] = (layer, times.get(key, ""))
        parent = keys.base
        for key in keys.steps:
            if key not in known:
                hit = lookup(key)
                if hit is not None:
                    known[key] = (hit.record.layer, hit.record.created)
            if key in known:
                layer, created = known[key]
                entries.append(CacheEntry(key, parent, layer, created))
            parent = key
    return entries
