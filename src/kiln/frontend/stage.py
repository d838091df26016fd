"""What instruction handlers work with while a stage is planned.

:class:`StageState` is the stage being walked (its image config, declared ARGs, the
filesystem steps so far); :class:`Planning` is the planner as the handlers see it: word
expansion, errors naming the Dockerfile line, base images and URLs resolved, other stages
referenced by ``--from``. The planner implements it; the handlers depend on nothing else,
so :mod:`kiln.frontend.instructions` and :mod:`kiln.frontend.planner` do not import each
other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from kiln.errors import DockerfileError
from kiln.frontend.base import Op, StagePlan
from kiln.frontend.dockerfile import Instruction
from kiln.image import ImageConfig
from kiln.oci import Platform
from kiln.source.context import BuildContext
from kiln.source.image import ImageBase


class ImageResolver(Protocol):
    def resolve(self, ref: str, platform: Platform) -> ImageBase:
        """Resolve a reference to a pinned image (manifest and config only)."""
        ...


class UrlFetcher(Protocol):
    def fetch(self, url: str, checksum: str | None) -> str:
        """Download *url* (once) and return the digest of its content."""
        ...


@dataclass(frozen=True, slots=True)
class PlanOptions:
    platform: Platform  # the target platform
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = "default"
    # a multi-platform build: step labels start with the stage's platform
    platform_labels: bool = False


@dataclass
class StageState:
    """What an instruction handler reads and changes while a stage is walked."""

    plan: StagePlan
    config: ImageConfig
    args: dict[str, str | None] = field(default_factory=dict)  # declared ARGs (ordered)
    cmd_set: bool = False
    # filesystem steps so far: (instruction, op, index of its history entry)
    pending: list[tuple[Instruction, Op, int]] = field(default_factory=list)

    @property
    def shell(self) -> list[str]:
        return list(self.config.shell or ["/bin/sh", "-c"])

    def arg_values(self) -> dict[str, str]:
        return {k: v for k, v in self.args.items() if v is not None}

    def expansion_env(self) -> dict[str, str]:
        env = self.arg_values()
        env.update(self.config.env_map())
        return env


class Planning(Protocol):
    """The planner's services to instruction handlers."""

    @property
    def path(self) -> str: ...
    @property
    def options(self) -> PlanOptions: ...
    @property
    def context(self) -> BuildContext: ...

    def error(self, what: str, line: int, hint: str | None = None) -> DockerfileError: ...
    def expand(self, word: str, env: Mapping[str, str], line: int) -> str: ...
    def expand_words(self, word: str, env: Mapping[str, str], line: int) -> list[str]: ...
    def key_values(self, ins: Instruction, state: StageState) -> list[tuple[str, str]]: ...
    def workdir_join(self, state: StageState, path: str) -> str: ...
    def arg_declared(self, name: str, default: str | None, state: StageState,
                     line: int) -> None: ...  # fmt: skip
    def proxy_env(self, state: StageState) -> list[str]: ...
    def stage_source(self, name: str, before: int, line: int) -> int | ImageBase:
        """``--from=`` resolution: an earlier stage (planned now), else an image."""
        ...

    def url_digest(self, url: str, checksum: str | None, line: int) -> str: ...
