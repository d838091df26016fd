"""Dockerfile → :class:`BuildPlan`: stages, ARG/ENV expansion, image config, steps.

The planner evaluates every instruction without executing anything: metadata
instructions update the stage's image config, filesystem instructions become
:class:`Step` s. Base images are resolved to a manifest digest and config through the
injected resolver (no layer is downloaded). Only the stages the target needs are planned.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from kiln.errors import DockerfileError, KilnError, UsageError
from kiln.frontend import instructions
from kiln.frontend.base import (
    Base,
    BuildPlan,
    ScratchBase,
    StageBase,
    StagePlan,
    Step,
)
from kiln.frontend.dockerfile import Instruction, ParsedDockerfile, RawStage, parse_instruction_text
from kiln.frontend.shell_words import PREDEFINED_ARGS, WordError, WordExpander, parse_key_values
from kiln.frontend.stage import ImageResolver, PlanOptions, StageState, UrlFetcher
from kiln.image import ImageConfig
from kiln.oci import Platform, host_platform
from kiln.source.context import BuildContext
from kiln.source.image import ImageBase

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def platform_args(target: Platform, build: Platform) -> dict[str, str]:
    """BuildKit's automatic platform ARGs (BUILDPLATFORM, TARGETARCH, ...)."""
    out: dict[str, str] = {}
    for prefix, p in (("BUILD", build), ("TARGET", target)):
        out[f"{prefix}PLATFORM"] = str(p)
        out[f"{prefix}OS"] = p.os
        out[f"{prefix}ARCH"] = p.architecture
        out[f"{prefix}VARIANT"] = p.variant
    return out


class Planner:
    """Plans the stages the target needs; implements :class:`~kiln.frontend.stage.Planning`
    for the instruction handlers."""

    def __init__(
        self,
        parsed: ParsedDockerfile,
        context: BuildContext,
        resolver: ImageResolver,
        options: PlanOptions,
        urls: UrlFetcher | None = None,
    ) -> None:
        self.parsed = parsed
        self.path = parsed.path
        self.context = context
        self.resolver = resolver
        self.options = options
        self.urls = urls
        self.words = WordExpander(parsed.escape)
        self.used_args: set[str] = set()
        self.meta: dict[str, str | None] = {}
        self.automatic = platform_args(options.platform, host_platform())
        self.stages: dict[int, StagePlan] = {}
        self._planning: set[int] = set()
        self._images: dict[tuple[str, Platform], ImageBase] = {}
        self._platforms: dict[int, Platform] = {}  # each stage's platform, once known

    # ------------------------------------------------------------------ entry point
    def plan(self) -> BuildPlan:
        self._eval_meta_args()
        target = self._target_index()
        self._plan_stage(target)
        target_plan = self.stages[target]
        assert target_plan.config is not None
        target_plan.config.labels.update(self.options.labels)
        warnings = []
        unused = sorted(
            k
            for k in self.options.build_args
            if k not in self.used_args and k not in PREDEFINED_ARGS
        )
        if unused:
            warnings.append(f"build-args not consumed by the Dockerfile: {', '.join(unused)}")
        used = {k: v for k, v in self.options.build_args.items() if k in self.used_args}
        return BuildPlan(self.stages, target, self.path, used, warnings)

    # ------------------------------------------------------------------ helpers used by handlers
    def error(self, what: str, line: int, hint: str | None = None) -> DockerfileError:
        return DockerfileError(what, path=self.path, line=line, hint=hint)

    def expand(self, word: str, env: Mapping[str, str], line: int) -> str:
        try:
            return self.words.expand(word, env)
        except WordError as exc:
            raise self.error(str(exc), line) from exc

    def expand_words(self, word: str, env: Mapping[str, str], line: int) -> list[str]:
        try:
            return self.words.expand_words(word, env)
        except WordError as exc:
            raise self.error(str(exc), line) from exc

    def resolve_image(self, ref: str, line: int, platform: Platform | None = None) -> ImageBase:
        """The image *ref* for *platform* (default: the target platform)."""
        platform = platform or self.options.platform
        if (ref, platform) not in self._images:
            try:
                self._images[ref, platform] = self.resolver.resolve(ref, platform)
            except DockerfileError:
                raise
            except KilnError as exc:
                raise exc.prefixed(f"{self.path}:{line}") from exc
        return self._images[ref, platform]

    def url_digest(self, url: str, checksum: str | None, line: int) -> str:
        if self.urls is None:
            raise self.error("ADD of a URL is not available here", line)
        try:
            return self.urls.fetch(url, checksum)
        except KilnError as exc:
            raise exc.prefixed(f"{self.path}:{line}") from exc

    def stage_by_name(self, name: str, before: int) -> int | None:
        """A stage named *name* (or numbered) defined before stage *before*."""
        lowered = name.lower()
        for raw in self.parsed.stages[:before]:
            if raw.name == lowered:
                return raw.index
        if name.isdigit() and int(name) < before:
            return int(name)
        return None

    def stage_source(self, name: str, before: int, line: int) -> int | ImageBase:
        """``--from=`` resolution, as BuildKit: a stage of the whole file (earlier or later,
        planned now; the stage itself or a cycle is an error), else an image."""
        idx = self.stage_by_name(name, len(self.parsed.stages))
        if idx is not None:
            if idx == before:
                raise self.error(f"circular dependency detected on stage: {name}", line)
            self._plan_stage(idx)
            return idx
        if name.isdigit():
            raise self.error(f"invalid --from: stage {name} does not exist", line)
        return self.resolve_image(name, line, self._platforms.get(before))

    def arg_declared(self, name: str, default: str | None, state: StageState, line: int) -> None:
        if name in self.options.build_args:
            self.used_args.add(name)
            value: str | None = self.options.build_args[name]
        elif default is not None:
            value = self.expand(default, state.expansion_env(), line)
        elif name in self.meta:
            value = self.meta[name]
        else:
            value = self.automatic.get(name)
        state.args[name] = value

    def proxy_env(self, state: StageState) -> list[str]:
        out = []
        for name in sorted(PREDEFINED_ARGS):
            if name in self.options.build_args and name not in state.args:
                self.used_args.add(name)
                out.append(f"{name}={self.options.build_args[name]}")
        return out

    # ------------------------------------------------------------------ meta args and target
    def _eval_meta_args(self) -> None:
        for ins in self.parsed.meta_args:
            for name, default in instructions.split_arg(ins, self):
                if name in self.options.build_args:
                    self.used_args.add(name)
                    self.meta[name] = self.options.build_args[name]
                elif default is not None:  # later ARGs on the line see earlier ones
                    self.meta[name] = self.expand(default, self._meta_env(), ins.line)
                else:
                    self.meta[name] = self.automatic.get(name)

    def _meta_env(self) -> dict[str, str]:
        """FROM lines see the global ARGs and the automatic platform ARGs."""
        env = dict(self.automatic)
        env.update({k: v for k, v in self.meta.items() if v is not None})
        return env

    def _target_index(self) -> int:
        target = self.options.target
        if not target:
            return len(self.parsed.stages) - 1
        idx = self.stage_by_name(target, len(self.parsed.stages))
        if idx is None:
            names = [s.name for s in self.parsed.stages if s.name]
            raise UsageError(
                f"--target {target}: no such stage in {self.path}",
                hint=f"stages: {', '.join(names) if names else '(none is named)'}",
            )
        return idx

    # ------------------------------------------------------------------ stages
    def _plan_stage(self, index: int) -> StagePlan:
        if index in self.stages:
            return self.stages[index]
        if index in self._planning:
            raw = self.parsed.stages[index]
            shown = raw.name or str(index)
            raise self.error(f"circular dependency detected on stage: {shown}", raw.line)
        self._planning.add(index)
        raw = self.parsed.stages[index]
        base, config, platform = self._base(raw)
        self._platforms[index] = platform
        multi = len(self.parsed.stages) > 1
        plan = StagePlan(
            index=index,
            name=raw.name,
            base=base,
            line=raw.line,
            platform=platform,
        )
        display = plan.name or (f"stage-{index}" if multi else "build")
        plan.label = display
        if self.options.platform_labels:
            display = f"{self.options.platform} {display}"
        state = StageState(plan=plan, config=config)
        triggers = config.onbuild
        config.onbuild = []
        walk = [parse_instruction_text(t, self.path, raw.line) for t in triggers]
        walk += raw.instructions
        for ins in walk:
            instructions.dispatch(self, state, ins)
        total = len(state.pending) + 1
        for n, (ins, op, history_index) in enumerate(state.pending, start=2):
            plan.steps.append(
                Step(
                    stage=index,
                    stage_name=display,
                    number=n,
                    total=total,
                    op=op,
                    text=ins.display,
                    line=ins.line,
                    history_index=history_index,
                )
            )
        plan.config = config
        self.stages[index] = plan
        self._planning.discard(index)
        return plan

    def _base(self, raw: RawStage) -> tuple[Base, ImageConfig, Platform]:
        """The stage's base, its config, and the stage's platform: ``FROM --platform=``,
        else the base stage's, else the target platform."""
        name = self.expand(raw.base, self._meta_env(), raw.line)
        if not name:
            raise self.error(
                f"base name ({raw.base}) should not be blank",
                raw.line,
                hint="pass the missing build argument with --build-arg",
            )
        platform: Platform | None = None
        if raw.platform:
            wanted = self.expand(raw.platform, self._meta_env(), raw.line)
            try:
                platform = Platform.parse(wanted)
            except ValueError as exc:
                raise self.error(str(exc), raw.line) from exc
        idx = self.stage_by_name(name, raw.index)
        if idx is not None:
            parent = self._plan_stage(idx)
            assert parent.config is not None and parent.platform is not None
            return StageBase(idx), parent.config.clone(), platform or parent.platform
        platform = platform or self.options.platform
        if name.lower() == "scratch":
            cfg = ImageConfig(platform=platform, env=[f"PATH={DEFAULT_PATH}"])
            return ScratchBase(), cfg, platform
        image = self.resolve_image(name, raw.line, platform)
        cfg = image.config.clone()
        cfg.diff_ids = []
        if not any(e.startswith("PATH=") for e in cfg.env):
            cfg.env.insert(0, f"PATH={DEFAULT_PATH}")
        return image, cfg, platform

    def workdir_join(self, state: StageState, path: str) -> str:
        base = state.config.workdir or "/"
        joined = path if path.startswith("/") else posixpath.join(base, path)
        trailing = path.endswith("/") and joined != "/"
        out = posixpath.normpath(joined)
        return out + "/" if trailing else out

    def key_values(self, ins: Instruction, state: StageState) -> list[tuple[str, str]]:
        try:
            return parse_key_values(
                ins.value, self.words, state.expansion_env(), instruction=ins.cmd
            )
        except WordError as exc:
            raise self.error(str(exc), ins.line) from exc
