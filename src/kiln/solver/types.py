"""What the solver produces and reports while it works."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from kiln.cache.description import KeyDescription
from kiln.cache.records import CacheSource, StepRecord
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
class MissReason:
    """Why a step ran although caches were there: the first input that differs from the
    closest cached step (``kind``: what sort of input, ``subject``: which one — a path,
    a variable name, a stage, an image), ``detail`` saying it in words."""

    kind: str
    subject: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class StepReport:
    step: Step
    key: str  # the plan key
    cached: CacheSource | Literal[False]
    seconds: float
    layer: Layer | None
    created: str
    content_key: str = ""  # the content key (see kiln.solver.keys); "" when the same
    inputs: str | None = None  # what the step read from other stages, when it does
    miss: MissReason | None = None  # why it ran (None for a hit)
    origin: str = ""  # for a remote hit: the imported cache it came from

    @property
    def record(self) -> StepRecord:
        return StepRecord(self.layer, self.created, self.inputs)


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step of a solved stage, for cache export: both its keys and what it produced."""

    key: str
    content_key: str
    record: StepRecord


@dataclass
class StageResult:
    index: int
    key: str  # final plan key of the stage
    layers: list[Layer]  # the whole chain, base layers first
    config: ImageConfig  # diff IDs and history timestamps filled in
    # every step this stage ran or found cached, for cache export
    step_results: list[StepResult] = field(default_factory=list)
    content_key: str = ""  # final content key of the stage

    @property
    def final_content_key(self) -> str:
        return self.content_key or self.key


@dataclass
class BuildResult:
    plan: BuildPlan
    target: StageResult
    stages: dict[int, StageResult]  # the stages that were solved
    reports: list[StepReport]
    keys: dict[int, StageKeys]  # plan keys of every planned stage, solved or not
    source_date_epoch: int | None = None  # part of every key
    # each step's key description by (stage, step number), and the encoded trees of
    # context files they name (for cache export)
    about: dict[tuple[int, int], KeyDescription] = field(default_factory=dict)
    trees: Callable[[str], str | None] = lambda _digest: None


class Progress(Protocol):
    """Receives build events; implementations render them (rich, plain, JSON)."""

    def step_started(self, step: Step) -> None: ...
    def step_cached(self, step: Step, source: CacheSource) -> None: ...
    def step_missed(self, step: Step, reason: MissReason) -> None: ...
    def step_log(self, step: Step, line: str) -> None: ...
    def step_done(self, step: Step, seconds: float) -> None: ...
    def step_failed(self, step: Step, seconds: float, error: str) -> None: ...
    def message(self, text: str) -> None: ...
