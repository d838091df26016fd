"""Solving a plan: look every step up by key, run only what misses.

Stages are solved in a thread pool, each at most once (memoised futures). A stage first
looks up all its steps; the stages that its missing steps read (``COPY --from``, bind
mounts) are started at once, in parallel, while a stage whose results all hit is never
materialised: a hit costs a lookup, not a download. A step that misses needs its parent's
filesystem, and only then are the parent layers unpacked (and fetched if they are remote).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from kiln.cache.description import KeyDescription
from kiln.cache.mounts.store import MountStore
from kiln.cache.records import CacheHit, CacheLookup, StepRecord
from kiln.cache.store import LocalCache, now_rfc3339
from kiln.content import BlobLocator, BlobStore
from kiln.errors import KilnError
from kiln.executor.base import Executor
from kiln.frontend.base import BuildPlan, ScratchBase, StageBase, Step
from kiln.image import ImageConfig
from kiln.oci import Layer
from kiln.snapshot.snapshots import SnapshotStore
from kiln.solver.describe import describe_plan, stage_label
from kiln.solver.explain import Explainer
from kiln.solver.gate import StepGate
from kiln.solver.keys import StageKeys, compute_keys, content_step_key, reads_stages
from kiln.solver.steps import StepRunner
from kiln.solver.types import (
    BuildResult,
    MissReason,
    Progress,
    SolveOptions,
    StageResult,
    StepReport,
    StepResult,
)
from kiln.source.context import BuildContext
from kiln.source.image import ImageBase
from kiln.state import KilnRoot

log = logging.getLogger(__name__)


class Solver:
    def __init__(
        self,
        root: KilnRoot,
        blobs: BlobStore,
        locator: BlobLocator,
        local_cache: LocalCache,
        snapshots: SnapshotStore,
        executor: Executor,
        context: BuildContext,
        progress: Progress,
        options: SolveOptions,
        cache_mounts: MountStore,
        remote: Sequence[CacheLookup] = (),
        ran_before: Mapping[str, StepReport] | None = None,
        gate: StepGate | None = None,
        explainer: Explainer | None = None,
    ) -> None:
        """*ran_before*: steps that ran in an earlier pass of this build (one that a
        corrupt cached blob ended), by key: reported as run, not as local hits. *gate*:
        shared with the solvers of the build's other platforms (a key runs once).
        *explainer*: says why each step that runs missed."""
        self.gate = gate
        self.explainer = explainer
        self.context = context
        self._rebuilt: set[int] = set()  # stages of which a step ran
        self.ran_before = dict(ran_before or {})
        self.root = root
        self.blobs = blobs
        self.locator = locator
        self.local = local_cache
        self.snapshots = snapshots
        self.progress = progress
        self.options = options
        self.remote = list(remote)
        self.runner = StepRunner(root, blobs, locator, snapshots, executor, context, options,
                                 cache_mounts)  # fmt: skip
        self._futures: dict[int, Future[StageResult]] = {}
        self._lock = threading.Lock()
        self._reports: list[StepReport] = []
        self._pool: ThreadPoolExecutor | None = None
        self._build_time = now_rfc3339(options.source_date_epoch)

    # ------------------------------------------------------------------ entry point
    def solve(self, plan: BuildPlan) -> BuildResult:
        self.plan = plan
        self.keys: dict[int, StageKeys] = compute_keys(plan, self.options.source_date_epoch)
        self.about = describe_plan(plan, self.keys)
        self.stage_names = {i: stage_label(plan, i) for i in plan.stages}
        needed = plan.needed_order()
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(needed)), thread_name_prefix="stage")
        self.runner.stage_result = self._stage_result
        try:
            target = self._stage_future(plan.target).result()
        except BaseException:
            self.runner.executor.kill_all()
            raise
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        stages = {i: f.result() for i, f in self._futures.items() if f.done() and not f.exception()}
        order = {idx: n for n, idx in enumerate(needed)}
        reports = sorted(self._reports, key=lambda r: (order.get(r.step.stage, 0), r.step.number))
        self._keep_fetched_hits(reports)
        return BuildResult(plan, target, stages, reports, self.keys,
                           self.options.source_date_epoch, self.about, self._tree_text)  # fmt: skip

    # ------------------------------------------------------------------ stages
    def _stage_future(self, index: int) -> Future[StageResult]:
        with self._lock:
            future = self._futures.get(index)
            if future is None:
                assert self._pool is not None
                future = self._pool.submit(self._solve_stage, index)
                self._futures[index] = future
            return future

    def _stage_result(self, index: int) -> StageResult:
        return self._stage_future(index).result()

    def lookup(self, key: str) -> CacheHit | None:
        if self.options.no_cache:
            return None
        record = self.local.get(key)
        if record is not None:
            return CacheHit(record, "local")
        for source in self.remote:
            hit = source.lookup(key)
            if hit is not None:
                return hit
        return None

    def _solve_stage(self, index: int) -> StageResult:
        stage = self.plan.stages[index]
        keys = self.keys[index]
        assert stage.config is not None
        config = stage.config.clone()
        base = stage.base
        content_parent = keys.base  # the content key of the filesystem so far
        if isinstance(base, StageBase):
            parent = self._stage_result(base.stage)
            chain = list(parent.layers)
            content_parent = parent.final_content_key
            inherited = parent.config.history
            config.history[: len(inherited)] = copy.deepcopy(inherited)
        elif isinstance(base, ImageBase):
            chain = self.runner.image_layers(base)
        else:
            assert isinstance(base, ScratchBase)
            chain = []
        hits = [self.lookup(k) for k in keys.steps]  # plan keys first: no build needed
        first_miss = next((i for i, h in enumerate(hits) if h is None), len(hits))
        for step in stage.steps[first_miss:]:
            for dep in step.depends_on():
                self._stage_future(dep)  # start what the missing steps will read, in parallel
        step_results: list[StepResult] = []
        plan_parent = keys.base
        ran_before: Step | None = None  # the last step of this stage that ran
        base_rebuilt = isinstance(base, StageBase) and base.stage in self._rebuilt
        for step, key, hit in zip(stage.steps, keys.steps, hits, strict=True):
            content_key, inputs, hit = self._by_content(step, key, hit, content_parent,
                                                        plan_parent)  # fmt: skip
            why = _Why(self, step, ran_before, base_rebuilt)
            record = self._run_or_reuse(step, key, content_key, inputs, hit, chain, why)
            if hit is None:
                ran_before = step
            if record.layer is not None:
                chain.append(record.layer)
            history = config.history[step.history_index]
            history.empty_layer = record.layer is None
            history.created = record.created or None
            step_results.append(StepResult(key, content_key, record))
            content_parent, plan_parent = content_key, key
        _fill_history_times(config, self._build_time)
        config.diff_ids = [layer.diff_id for layer in chain]
        return StageResult(index, keys.final, chain, config, step_results, content_parent)

    def _by_content(self, step: Step, key: str, hit: CacheHit | None, parent: str,
                    plan_parent: str) -> tuple[str, str | None, CacheHit | None]:  # fmt: skip
        """The step's content key, what it read from other stages (if it does) and its
        hit: when the plan key missed, the content key may still hit (a stage that
        reran but made the same files). Only then are the stages it reads built."""
        inputs = hit.record.inputs if hit is not None else None
        if hit is None and reads_stages(step.op):
            for dep in step.depends_on():
                self._stage_result(dep)
            inputs = self.runner.input_digest(step)
        epoch = self.options.source_date_epoch
        content_key = content_step_key(parent, plan_parent, step.op, key, self.keys, epoch,
                                       inputs)  # fmt: skip
        if hit is None and content_key != key:
            hit = self.lookup(content_key)
        return content_key, inputs, hit

    def _run_or_reuse(self, step: Step, key: str, content_key: str, inputs: str | None,
                      hit: CacheHit | None, chain: list[Layer],
                      why: _Why) -> StepRecord:  # fmt: skip
        if hit is not None:
            self.progress.step_cached(step, hit.source)
            record = StepRecord(hit.record.layer, hit.record.created, inputs, self._about(step))
            earlier = self.ran_before.get(key) if hit.source == "local" else None
            if earlier is not None and earlier.layer == hit.record.layer:
                self._report(earlier)  # it ran in this build, in the pass before this one
            else:
                self._report(StepReport(step, key, hit.source, 0.0, record.layer,
                                        record.created, content_key, inputs,
                                        origin=hit.origin))  # fmt: skip
            if hit.source == "local":
                self._store(key, content_key, record)  # both keys find it next time
            return record
        for dep in step.depends_on():
            self._stage_result(dep)  # wait for what this step reads before it starts
        if self.gate is None:
            return self._run(step, key, content_key, inputs, chain, why)
        with self.gate.hold(key):  # held only while running: no gate is awaited inside
            hit = self.lookup(key)  # another platform's solver may have just run it
            if hit is not None:
                return self._run_or_reuse(step, key, content_key, inputs, hit, chain, why)
            return self._run(step, key, content_key, inputs, chain, why)

    def _run(self, step: Step, key: str, content_key: str, inputs: str | None,
             chain: list[Layer], why: _Why) -> StepRecord:  # fmt: skip
        if self.runner.executor.cancelled:
            raise KilnError("the build was cancelled: another step failed")
        self._rebuilt.add(step.stage)
        reason = why()
        started = time.monotonic()
        self.progress.step_started(step)
        if reason is not None:
            self.progress.step_missed(step, reason)
        try:
            layer = self.runner.execute(
                step, list(chain), lambda line: self.progress.step_log(step, line)
            )
        except KilnError as exc:
            seconds = time.monotonic() - started
            self.progress.step_failed(step, seconds, str(exc))
            where = f"[{step.stage_name} {step.number}/{step.total}] {step.text}"
            raise exc.prefixed(where).at(self.plan.dockerfile, step.line) from exc
        seconds = time.monotonic() - started
        record = StepRecord(layer, now_rfc3339(self.options.source_date_epoch), inputs,
                            self._about(step))  # fmt: skip
        self._store(key, content_key, record)
        self.progress.step_done(step, seconds)
        self._report(StepReport(step, key, False, seconds, layer, record.created, content_key,
                                inputs, reason))  # fmt: skip
        return record

    def _tree_text(self, digest: str) -> str | None:
        if self.explainer is not None:
            return self.explainer.tree_text(digest)
        return self.context.encoded_tree(digest)

    def _about(self, step: Step) -> KeyDescription | None:
        return self.about.get((step.stage, step.number))

    def _store(self, key: str, content_key: str, record: StepRecord) -> None:
        about = record.about
        if about is not None and about.tree and not self.local.has_tree(about.tree):
            encoded = self._tree_text(about.tree)
            if encoded is not None:
                self.local.put_tree(about.tree, encoded)
        self.local.put(key, record)
        if content_key != key:
            self.local.put(content_key, record)

    def _keep_fetched_hits(self, reports: list[StepReport]) -> None:
        """Remote hits whose blob is now on this machine become local cache entries."""
        for report in reports:
            layer = report.layer
            if report.cached == "remote" and (layer is None or self.blobs.has(layer.digest)):
                record = report.record.described(self._about(report.step))
                self._store(report.key, report.content_key or report.key, record)

    def ran(self) -> dict[str, StepReport]:
        """The steps this solver ran so far, by key (also after a failed solve)."""
        with self._lock:
            return {r.key: r for r in self._reports if r.cached is False}

    def _report(self, report: StepReport) -> None:
        with self._lock:
            self._reports.append(report)


def _fill_history_times(config: ImageConfig, build_time: str) -> None:
    """Metadata-only history entries take the time of the layer before them, and the
    image is as old as its newest entry: a fully cached rebuild gives the same digest."""
    known = [h.created for h in config.history if h.created]
    last = min(known) if known else build_time
    for entry in config.history:
        if entry.created is None:
            entry.created = last
        last = entry.created
    config.created = max((h.created for h in config.history if h.created), default=build_time)


class _Why:
    """The reason a step ran, worked out only when it does run."""

    def __init__(self, solver: Solver, step: Step, ran_before: Step | None,
                 base_rebuilt: bool) -> None:  # fmt: skip
        self.solver, self.step = solver, step
        self.ran_before, self.base_rebuilt = ran_before, base_rebuilt

    def __call__(self) -> MissReason | None:
        solver = self.solver
        about = solver._about(self.step)
        if solver.explainer is None or about is None:
            return None
        return solver.explainer.explain(self.step, about, solver.stage_names, self.ran_before,
                                        self.base_rebuilt)  # fmt: skip
