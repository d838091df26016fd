"""The build graph the frontend hands to the solver.

A Dockerfile becomes a :class:`BuildPlan`: one :class:`StagePlan` per stage the target
needs, each a base plus a list of :class:`Step` s. A step is one filesystem-changing op
(RUN, COPY/ADD, WORKDIR); metadata instructions (ENV, LABEL, CMD, ...) only shape the image
config, which the planner evaluates completely without executing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kiln.image import ImageConfig
from kiln.oci import Platform
from kiln.source.image import ImageBase

# ---------------------------------------------------------------------------- bases


@dataclass(frozen=True, slots=True)
class ScratchBase:
    pass


@dataclass(frozen=True, slots=True)
class StageBase:
    stage: int


Base = ScratchBase | ImageBase | StageBase

# ---------------------------------------------------------------------------- mounts


@dataclass(frozen=True, slots=True)
class CacheMount:
    target: str
    id: str
    sharing: Literal["shared", "private", "locked"] = "shared"
    from_stage: int | None = None
    source: str = ""
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class BindMount:
    target: str
    source: str = "/"
    from_stage: int | None = None  # None: the build context
    from_image: ImageBase | None = None
    readwrite: bool = False
    context_digest: str = ""  # for a bind of the build context: digest of what is bound


@dataclass(frozen=True, slots=True)
class TmpfsMount:
    target: str
    size: int = 0


@dataclass(frozen=True, slots=True)
class SecretMount:
    target: str
    id: str
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0
    env: str | None = None


Mount = CacheMount | BindMount | TmpfsMount | SecretMount

# ---------------------------------------------------------------------------- ops


@dataclass(frozen=True, slots=True)
class ExecOp:
    """RUN: a process in a container on top of the parent filesystem."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    user: str
    workdir: str
    network: str
    mounts: tuple[Mount, ...] = ()
    # heredoc scripts made available to the process: (path in container, content, mode)
    files: tuple[tuple[str, str, int], ...] = ()
    # proxy build args: in the environment, but not in the cache key (as BuildKit)
    proxy_env: tuple[str, ...] = ()
    # the platform the process runs as (the stage's): foreign ones under emulation
    platform: str = ""
    # which variables of env are build args (ARG) rather than ENV: for explanations only
    arg_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextSource:
    """Files from the build context; ``digest`` covers what is selected."""

    digest: str


@dataclass(frozen=True, slots=True)
class StageSource:
    stage: int


@dataclass(frozen=True, slots=True)
class ImageSource:
    image: ImageBase


@dataclass(frozen=True, slots=True)
class InlineSource:
    """Heredoc content: ``files`` maps a name to its content."""

    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class UrlSource:
    url: str
    checksum: str | None = None
    digest: str = ""  # digest of the downloaded content (filled by the planner)


CopySource = ContextSource | StageSource | ImageSource | InlineSource | UrlSource


@dataclass(frozen=True, slots=True)
class CopyOp:
    """COPY / ADD: sources placed at ``dest`` (absolute) on top of the parent."""

    source: CopySource
    srcs: tuple[str, ...]
    dest: str
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    add: bool = False  # ADD: extract local archives


@dataclass(frozen=True, slots=True)
class MkdirOp:
    """WORKDIR: make sure the directory exists (owned by the current user)."""

    path: str
    user: str


Op = ExecOp | CopyOp | MkdirOp

# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class Step:
    """One op plus what the user sees: ``[stage n/total] INSTRUCTION text``."""

    stage: int
    stage_name: str
    number: int  # position in the stage, FROM being 1 (as buildx counts)
    total: int
    op: Op
    text: str  # the instruction as written (first line)
    line: int
    history_index: int  # position of this step's history entry in the stage config

    @property
    def label(self) -> str:
        """``<stage> <n>/<total> <instruction>``, the name used in progress and metadata."""
        return f"{self.stage_name} {self.number}/{self.total} {self.text}"

    def depends_on(self) -> tuple[int, ...]:
        """Other stages whose filesystem this step reads."""
        deps: list[int] = []
        op = self.op
        if isinstance(op, CopyOp) and isinstance(op.source, StageSource):
            deps.append(op.source.stage)
        if isinstance(op, ExecOp):
            for m in op.mounts:
                if isinstance(m, (CacheMount, BindMount)) and m.from_stage is not None:
                    deps.append(m.from_stage)
        return tuple(deps)


@dataclass
class StagePlan:
    index: int
    name: str | None
    base: Base
    steps: list[Step] = field(default_factory=list)
    config: ImageConfig | None = None  # final config (history without timestamps)
    line: int = 0
    platform: Platform | None = None  # FROM --platform=..., else the target platform
    label: str = ""  # how progress names it (its name, "build" or "stage-N"), platform aside

    def dependencies(self) -> set[int]:
        deps = {d for s in self.steps for d in s.depends_on()}
        if isinstance(self.base, StageBase):
            deps.add(self.base.stage)
        return deps


@dataclass
class BuildPlan:
    stages: dict[int, StagePlan]
    target: int
    dockerfile: str
    build_args_used: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def target_stage(self) -> StagePlan:
        return self.stages[self.target]

    def needed_order(self) -> list[int]:
        """Stages the target needs, dependencies first."""
        order: list[int] = []
        seen: set[int] = set()

        def visit(i: int) -> None:
            if i in seen:
                return
            seen.add(i)
            for d in sorted(self.stages[i].dependencies()):
                visit(d)
            order.append(i)

        visit(self.target)
        return order
