"""What the solver produces and reports while it works."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from kiln.cache.records import CacheSource
from kiln.frontend.base import BuildPlan, Step
from kiln.image import ImageConfig
from kiln.oci import Layer
from kiln.solver.keys import StageKeys


@dataclass(frozen=True, slots=True)
class SolveOptions:
    no_cache: bool = False
    compression: str = "gzip"
    compression_level: int | None = None
    source_date_epoch: int | None = None
    secrets: tuple[tuple[str, str], ...] = ()  # (id, host file path)


@dataclass(frozen=True, slots=True)
class StepReport:
    step: Step
    key: str
    cached: CacheSource | Literal[False]
    seconds: float
    layer: Layer | None
    created: str


@dataclass
class StageResult:
    index: int
    key: str  # final key of the stage
    layers: list[Layer]  # the whole chain, base layers first
    config: ImageConfig  # diff IDs and history timestamps filled in
    # (key, layer) of every step this stage ran or found cached, for cache export
    step_results: list[tuple[str, Layer | None]] = field(default_factory=list)


@dataclass
class BuildResult:
    plan: BuildPlan
    target: StageResult
    stages: dict[int, StageResult]  # the stages that were solved
    reports: list[StepReport]
    keys: dict[int, StageKeys]  # keys of every planned stage, solved or not


class Progress(Protocol):
    """Receives build events; implementations render them (rich, plain, JSON)."""

    def step_started(self, step: Step) -> None: ...
    def step_cached(self, step: Step, source: CacheSource) -> None: ...
    def step_log(self, step: Step, line: str) -> None: ...
    def step_done(self, step: Step, seconds: float) -> None: ...
    def step_failed(self, step: Step, seconds: float, error: str) -> None: ...
    def message(self, text: str) -> None: ...
