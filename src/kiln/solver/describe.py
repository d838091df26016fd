"""Each step's :class:`~kiln.cache.description.KeyDescription`, from the plan and its keys.

The fields described are those of :func:`kiln.solver.keys.op_fields`, one fingerprint per
input a user would name (the command, the user, a mount, the copy's sources...), so that
an input that changes a key also changes its fingerprint here.
"""

from __future__ import annotations

from kiln.cache.description import KeyDescription, shorten, value_print
from kiln.frontend.base import (
    BindMount,
    BuildPlan,
    ContextSource,
    CopyOp,
    ExecOp,
    ScratchBase,
    StageBase,
    StagePlan,
    Step,
)
from kiln.solver.keys import StageKeys, op_fields
from kiln.source.image import ImageBase

Place = tuple[int, int]  # (stage index, step number)


def describe_plan(plan: BuildPlan, keys: dict[int, StageKeys]) -> dict[Place, KeyDescription]:
    """The description of every step of every stage the target needs."""
    out: dict[Place, KeyDescription] = {}
    for index in plan.needed_order():
        stage = plan.stages[index]
        parent = keys[index].base
        for n, (step, key) in enumerate(zip(stage.steps, keys[index].steps, strict=True)):
            base = base_text(plan, stage) if n == 0 else ""
            label = stage_label(plan, index)
            out[(index, step.number)] = describe_step(step, stage, label, parent, base, keys)
            parent = key
    return out


def stage_label(plan: BuildPlan, index: int) -> str:
    """The stage as progress names it, without a platform (the same on every platform)."""
    stage = plan.stages[index]
    return stage.label or stage.name or f"stage-{index}"


def base_text(plan: BuildPlan, stage: StagePlan) -> str:
    base = stage.base
    if isinstance(base, ScratchBase):
        return "scratch"
    if isinstance(base, StageBase):
        return f"stage {stage_label(plan, base.stage)}"
    assert isinstance(base, ImageBase)
    return f"image {base.manifest_digest}"


def describe_step(step: Step, stage: StagePlan, label: str, parent: str, base: str,
                  keys: dict[int, StageKeys]) -> KeyDescription:  # fmt: skip
    op = step.op
    fields = op_fields(op, keys)
    inputs: dict[str, str] = {}
    env: dict[str, str] = {}
    args: frozenset[str] = frozenset()
    tree = ""
    platform = str(stage.platform or "")
    if isinstance(op, ExecOp):
        platform = op.platform or platform
        inputs["command"] = value_print("command", [fields["args"], fields["files"]])
        for name in ("user", "workdir", "network"):
            inputs[name] = value_print(name, fields[name])
        for mount, raw in zip(op.mounts, fields["mounts"], strict=True):
            inputs[f"mount {mount.target}"] = value_print("mount", raw)
            if not tree and isinstance(mount, BindMount) and mount.context_digest:
                tree = mount.context_digest  # a bind of context files
        for item in op.env:
            name, _, value = item.partition("=")
            env[name] = value_print(name, value)
        args = frozenset(op.arg_names)
    else:
        for name, value in fields.items():
            inputs[name] = value_print(name, value)
        if isinstance(op, CopyOp) and isinstance(op.source, ContextSource):
            tree = op.source.digest
    return KeyDescription(
        stage=label,
        step=step.number,
        text=shorten(step.text),
        platform=platform,
        parent=parent,
        base=base,
        inputs=inputs,
        env=env,
        args=args,
        tree=tree,
    )
