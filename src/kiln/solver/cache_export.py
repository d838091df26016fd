"""Which steps a cache export holds.

``mode=min`` exports the steps of the final stage and of the stages it is built FROM;
``mode=max`` every step of every stage the target needs — including stages this build did
not have to solve (their results are looked up, so a fully cached build re-exports the
whole cache instead of shrinking it).

The cache mounts a build can export (:class:`MountSelection`) are those of the RUN steps
of every stage the target needs, used in this build or not: a mount no step ran with is
exported as imported, so a fully cached build does not drop it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kiln.cache.mounts.store import MountStore
from kiln.cache.records import CacheEntry, CacheHit, MountIdentity, MountRecord, StepRecord
from kiln.frontend.base import BuildPlan, CacheMount, ExecOp, StageBase
from kiln.solver.keys import content_step_key
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
    """The entries of *mode*: each step under its plan key and, where it differs, its
    content key (each chained to the key before it in the same chain)."""
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
        stages.reverse()  # bases first: a stage's content chain starts from its base's
    entries: list[CacheEntry] = []
    content_finals: dict[int, str] = {}
    for index in stages:
        entries += _stage_entries(result, index, lookup, content_finals)
    return entries


def _stage_entries(result: BuildResult, index: int, lookup: Lookup,
                   content_finals: dict[int, str]) -> list[CacheEntry]:  # fmt: skip
    stage = result.plan.stages[index]
    keys = result.keys[index]
    solved = result.stages.get(index)
    known: dict[str, StepRecord] = {}
    if solved is not None:
        for step_result in solved.step_results:
            known[step_result.key] = step_result.record
    base = stage.base
    content_parent = keys.base
    if isinstance(base, StageBase):
        content_parent = content_finals.get(base.stage, result.keys[base.stage].final)
    entries: list[CacheEntry] = []
    parent = keys.base
    for step, key in zip(stage.steps, keys.steps, strict=True):
        record = known.get(key)
        if record is None:
            hit = lookup(key)
            record = hit.record if hit is not None else None
        if record is None:  # not cached anywhere: neither it nor what follows is known
            content_parent = parent = key
            continue
        content_key = content_step_key(content_parent, parent, step.op, key, result.keys,
                                       result.source_date_epoch, record.inputs)  # fmt: skip
        about = result.about.get((index, step.number))
        tree = result.trees(about.tree) if about is not None and about.tree else None
        entries.append(CacheEntry(key, parent, record.layer, record.created, record.inputs,
                                  about, tree))  # fmt: skip
        if content_key != key:
            entries.append(CacheEntry(content_key, content_parent, record.layer, record.created,
                                      record.inputs, about, tree))  # fmt: skip
        parent, content_parent = key, content_key
    content_finals[index] = content_parent
    return entries


def combined(selections: Sequence[ExportSelection]) -> Callable[[str], list[CacheEntry]]:
    """The entries of every platform's result (a multi-platform build exports one cache)."""

    def entries(mode: str) -> list[CacheEntry]:
        return [entry for selection in selections for entry in selection(mode)]

    return entries


class MountSelection:
    """The cache mounts of a build's plans (one per platform), sealed by the store
    (``RemoteCaches.export``); a mount's identity has the platform of its step."""

    def __init__(self, plans: Sequence[BuildPlan], store: MountStore) -> None:
        self.plans = list(plans)
        self.store = store

    def identities(self) -> list[MountIdentity]:
        found: dict[MountIdentity, None] = {}
        for plan in self.plans:
            for index in plan.needed_order():
                for step in plan.stages[index].steps:
                    if isinstance(step.op, ExecOp):
                        for mount in step.op.mounts:
                            if isinstance(mount, CacheMount):
                                found[self.store.identity_of(mount, step.op.platform)] = None
        return list(found)

    def seal(self, identity: MountIdentity, max_size: int) -> MountRecord | None:
        return self.store.seal(identity, max_size)
