"""Why did a step miss? The first input that differs from the closest cached step.

When a step has to run, :class:`Explainer` looks for the cached steps closest to it in
every source (the local store, each imported cache): those at the same position in the
same stage (:attr:`KeyDescription.slot`) or started from the same key. The one sharing
the most inputs is compared with this step, input by input in a fixed order — platform,
the key it starts from (the base image, the stage it is built on, the step before),
environment (build args, then ENV), the instruction, its options and mounts, and last
the files it copies from the build context, down to the first path that differs — and
the first difference is the reason. A value is shown only as it is in this build (the
cache holds fingerprints, never values). No candidate anywhere: the sources looked up,
and why those that could not be used were not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.cache.description import KeyDescription
from kiln.cache.records import DescribedSource, SourceStatus
from kiln.frontend.base import (
    BindMount,
    ContextSource,
    CopyOp,
    ExecOp,
    ImageSource,
    InlineSource,
    MkdirOp,
    StageSource,
    Step,
    UrlSource,
)
from kiln.solver.types import MissReason
from kiln.source.context import BuildContext
from kiln.source.tree import FileTree, TreeChange


@dataclass(frozen=True, slots=True)
class Candidate:
    about: KeyDescription
    created: str
    source: str  # the name of the source holding it


class Explainer:
    """Explains the misses of one build (shared by its platforms' solvers)."""

    def __init__(self, sources: Sequence[DescribedSource], statuses: Sequence[SourceStatus],
                 context: BuildContext, *, no_cache: bool = False) -> None:  # fmt: skip
        self.sources = list(sources)
        self.statuses = list(statuses)
        self.context = context
        self.no_cache = no_cache
        self._trees: dict[str, FileTree | None] = {}

    def explain(self, step: Step, about: KeyDescription, stage_names: dict[int, str],
                ran_before: Step | None, base_rebuilt: bool) -> MissReason:  # fmt: skip
        """*ran_before*: the last step of this stage that ran before this one;
        *base_rebuilt*: for a stage built on another, whether that one ran a step."""
        if self.no_cache:
            return MissReason("no-cache", "", "--no-cache was given: every step runs")
        if ran_before is not None:
            return MissReason("previous-step", ran_before.label,
                              f"the step before it ran: {ran_before.label}")  # fmt: skip
        if about.step == 2 and base_rebuilt and about.base.startswith("stage "):
            name = about.base.removeprefix("stage ")
            return MissReason(
                "base-stage", name, f"stage {name}, which it is built on, was rebuilt"
            )
        candidates = self.candidates(about)
        if not candidates:
            return self._no_source(about)
        best = max(candidates, key=lambda c: (_likeness(about, c.about), c.created))
        return self._compare(step, about, best, stage_names)

    def tree_text(self, digest: str) -> str | None:
        """The encoded tree of context files *digest*: as a source already holds it (the
        digest pins the files, so it is the same tree), else encoded from the context."""
        for source in self.sources:
            text = source.tree(digest)
            if text is not None:
                return text
        return self.context.encoded_tree(digest)

    def candidates(self, about: KeyDescription) -> list[Candidate]:
        found: list[Candidate] = []
        for source in self.sources:
            for record in source.candidates(about.slot, about.parent):
                if record.about is not None:
                    found.append(Candidate(record.about, record.created, source.name))
        return found

    def _no_source(self, about: KeyDescription) -> MissReason:
        where = f"step {about.step} of stage {about.stage}"
        if not self.statuses:
            return MissReason("no-source", about.stage,
                              f"nothing is cached for {where}: the local store has no result "
                              "for it and no --cache-from was given")  # fmt: skip
        looked = ["the local store (nothing for it)"]
        for status in self.statuses:
            if status.loaded and not status.described:
                looked.append(f"{status.name} (its records say nothing of their inputs: an "
                              "inline cache, or one BuildKit or an older kiln wrote)")  # fmt: skip
            elif status.loaded:
                looked.append(f"{status.name} (loaded, nothing for it)")
            else:
                looked.append(f"{status.name} ({status.note or 'not usable'})")
        return MissReason("no-source", about.stage,
                          f"no source holds {where}; looked up: " + "; ".join(looked))  # fmt: skip

    # ------------------------------------------------------------------ comparing
    def _compare(self, step: Step, now: KeyDescription, cand: Candidate,
                 stage_names: dict[int, str]) -> MissReason:  # fmt: skip
        was = cand.about
        if now.platform != was.platform:
            return MissReason("platform", now.platform,
                              f"cached for {was.platform or 'another platform'} only, "
                              f"not {now.platform}")  # fmt: skip
        if now.parent != was.parent:
            return self._parent(step, now, was)
        env = self._env(step, now, was)
        if env is not None:
            return env
        if now.text != was.text:
            kind = "command" if isinstance(step.op, ExecOp) else "instruction"
            return MissReason(kind, step.text, f"the instruction changed: it is now {step.text}")
        for name in [*now.inputs, *(n for n in was.inputs if n not in now.inputs)]:
            if now.inputs.get(name) != was.inputs.get(name):
                return self._input(step, name, now, was, cand, stage_names)
        return MissReason("unknown", "", "every described input is the same as the cached "
                          f"step's (in {cand.source}): SOURCE_DATE_EPOCH or the kiln "
                          "version that wrote the cache differs")  # fmt: skip

    def _parent(self, step: Step, now: KeyDescription, was: KeyDescription) -> MissReason:
        if now.base and now.base != was.base:
            if now.base.startswith("image ") and was.base.startswith("image "):
                old, new = was.base.removeprefix("image "), now.base.removeprefix("image ")
                return MissReason("base-image", new,
                                  f"the base image changed: {_short(old)} before, "
                                  f"{_short(new)} now")  # fmt: skip
            return MissReason("base", now.base, f"it is now built on {now.base}, not "
                              f"{was.base or 'what the cache has'}")  # fmt: skip
        if now.base:
            name = now.base.removeprefix("stage ")
            return MissReason(
                "base-stage", name, f"{now.base}, which it is built on, differs from the cached one"
            )
        return MissReason(
            "previous-step",
            f"{step.stage_name} {step.number - 1}",
            "the step before it is not the one the cached step followed",
        )

    def _env(self, step: Step, now: KeyDescription, was: KeyDescription) -> MissReason | None:
        if now.env == was.env:
            return None
        values = dict(item.partition("=")[::2] for item in _env_of(step))
        names = sorted(now.env.keys() | was.env.keys(),
                       key=lambda n: (n not in now.args and n not in was.args, n))  # fmt: skip
        for name in names:
            if now.env.get(name) == was.env.get(name):
                continue
            is_arg = name in now.args or (name not in now.env and name in was.args)
            kind, what = ("build-arg", "build arg") if is_arg else ("env", "ENV")
            if name not in now.env:
                return MissReason(kind, name, f"{what} {name} is no longer set")
            shown = repr(values.get(name, ""))
            if name not in was.env:
                return MissReason(kind, name, f"{what} {name} is new: {name}={shown[1:-1]}")
            return MissReason(kind, name, f"{what} {name} changed: now {name}={shown[1:-1]}")
        return None

    def _input(self, step: Step, name: str, now: KeyDescription, was: KeyDescription,
               cand: Candidate, stage_names: dict[int, str]) -> MissReason:  # fmt: skip
        op = step.op
        if name == "source" and isinstance(op, CopyOp):
            source = op.source
            if isinstance(source, ContextSource):
                return self._files(now, was, cand)
            if isinstance(source, StageSource):
                stage = stage_names.get(source.stage, str(source.stage))
                return MissReason("stage-files", stage,
                                  f"the files it copies from stage {stage} changed")  # fmt: skip
            if isinstance(source, ImageSource):
                digest = source.image.manifest_digest
                return MissReason(
                    "image", digest, f"the image it copies from is now {_short(digest)}"
                )
            if isinstance(source, UrlSource):
                return MissReason("url", source.url, f"the content of {source.url} changed")
            assert isinstance(source, InlineSource)
            return MissReason("instruction", step.text, "the inline (heredoc) content changed")
        if name.startswith("mount "):
            target = name.removeprefix("mount ")
            if now.tree and now.tree != was.tree and _binds_context(op, target):
                return self._files(now, was, cand)
            return MissReason("mount", target, f"the mount at {target} changed")
        if name == "command":
            return MissReason("command", step.text, "the command changed (SHELL, or an "
                              f"expanded value): {step.text}")  # fmt: skip
        if isinstance(op, (ExecOp, MkdirOp)) and name in ("user", "workdir", "network"):
            value = getattr(op, "path" if name == "workdir" and isinstance(op, MkdirOp) else name)
            return MissReason(name, str(value), f"the {name} changed: now {value!r}")
        return MissReason("instruction", step.text,
                          f"its {name} changed (a variable it expands?): {step.text}")  # fmt: skip

    def _files(self, now: KeyDescription, was: KeyDescription, cand: Candidate) -> MissReason:
        mine = self.context.tree(now.tree) if now.tree else None
        theirs = self._tree(cand.source, was.tree) if was.tree else None
        change = mine.changes(theirs) if mine is not None and theirs is not None else None
        if change is None:
            return MissReason("context", "", "the context files it copies changed "
                              f"(the cache in {cand.source} does not list them)")  # fmt: skip
        return _file_reason(change)

    def _tree(self, source_name: str, digest: str) -> FileTree | None:
        if digest not in self._trees:
            tree = None
            for source in self.sources:
                text = source.tree(digest) if source.name == source_name else None
                if text is not None:
                    try:
                        tree = FileTree.decode(text)
                    except ValueError:
                        tree = None
                    break
            self._trees[digest] = tree
        return self._trees[digest]


def _file_reason(change: TreeChange) -> MissReason:
    more = f" (and {change.more} more)" if change.more else ""
    path = change.path
    if change.summarised:
        return MissReason("file-changed", path + "/", f"a file below {path}/ changed{more}")
    if change.kind == "changed":
        return MissReason("file-changed", path, f"{path} changed{more}")
    if change.kind == "added":
        return MissReason("file-added", path, f"{path} was added{more}")
    if change.kind == "removed":
        return MissReason("file-removed", path, f"{path} was removed{more}")
    old, new = change.modes
    return MissReason("file-mode", path, f"{path} changed mode from {old:o} to {new:o}{more}")


def _likeness(now: KeyDescription, was: KeyDescription) -> int:
    """How many inputs two descriptions share (the closest candidate has the most)."""
    score = sum(2 for a, b in ((now.platform, was.platform), (now.parent, was.parent),
                               (now.slot, was.slot)) if a == b)  # fmt: skip
    score += now.text == was.text
    score += sum(1 for k, v in now.inputs.items() if was.inputs.get(k) == v)
    score += sum(1 for k, v in now.env.items() if was.env.get(k) == v)
    return score


def _env_of(step: Step) -> tuple[str, ...]:
    return step.op.env if isinstance(step.op, ExecOp) else ()


def _binds_context(op: object, target: str) -> bool:
    if not isinstance(op, ExecOp):
        return False
    return any(isinstance(m, BindMount) and m.target == target and m.from_stage is None
               and m.from_image is None for m in op.mounts)  # fmt: skip


def _short(digest: str) -> str:
    return digest[:19]
