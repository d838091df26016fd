"""Cache keys: a digest of everything that affects a step's filesystem result.

A key is ``sha256`` of the canonical JSON of a structure whose every field is an input of
the step; anything not listed here must not change what the step produces.

Two keys per step, as BuildKit has:

- the **plan key**, from the plan alone (no step runs and no layer is downloaded to
  compute it): a ``COPY --from=<stage>`` or a ``RUN --mount=type=bind,from=<stage>`` is
  keyed by that stage's final key. It is the fast lookup.
- the **content key** (:func:`step_key` with *inputs*): the same step keyed by the
  *content* of what it reads from other stages (a digest of the selected paths, owners
  included, mtimes not — BuildKit's content checksum), chained from the content key of
  the step before. A stage that reruns but produces the same files leaves the content
  keys of everything that reads it unchanged, so those steps still hit. Until a stage
  read happens the two chains are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.frontend.base import (
    Base,
    BindMount,
    BuildPlan,
    CacheMount,
    ContextSource,
    CopyOp,
    CopySource,
    ExecOp,
    ImageSource,
    InlineSource,
    MkdirOp,
    Mount,
    Op,
    ScratchBase,
    SecretMount,
    StageBase,
    StageSource,
    TmpfsMount,
    UrlSource,
)
from kiln.oci import canonical_json, sha256_digest

# Bump when the meaning of a key changes: old cache entries then simply stop matching.
KEY_VERSION = 3


def digest_of(structure: dict[str, Any]) -> str:
    return sha256_digest(canonical_json(structure))


@dataclass(frozen=True, slots=True)
class StageKeys:
    base: str  # key of the stage's base filesystem
    steps: tuple[str, ...]  # key after each step

    @property
    def final(self) -> str:
        return self.steps[-1] if self.steps else self.base


def compute_keys(plan: BuildPlan, source_date_epoch: int | None = None) -> dict[int, StageKeys]:
    """Plan keys of every step of every planned stage (dependencies first)."""
    keys: dict[int, StageKeys] = {}
    for index in plan.needed_order():
        stage = plan.stages[index]
        parent = base_key(stage.base, keys)
        base = parent
        steps = []
        for step in stage.steps:
            parent = step_key(parent, step.op, keys, source_date_epoch)
            steps.append(parent)
        keys[index] = StageKeys(base, tuple(steps))
    return keys


def step_key(parent: str, op: Op, keys: dict[int, StageKeys], source_date_epoch: int | None,
             inputs: str | None = None) -> str:  # fmt: skip
    """The key of *op* run on *parent*: its plan key, or with *inputs* (the digest of the
    content it reads from other stages, see :func:`reads_stages`) its content key."""
    fields: dict[str, Any] = {
        "v": KEY_VERSION,
        "parent": parent,  # the filesystem the step starts from
        "op": op_fields(op, keys, inputs),  # what the step does, fully expanded
    }
    if source_date_epoch is not None:
        fields["epoch"] = source_date_epoch  # clamps the layer's file times
    return digest_of(fields)


def content_step_key(parent: str, plan_parent: str, op: Op, plan_key: str,
                     keys: dict[int, StageKeys], source_date_epoch: int | None,
                     inputs: str | None) -> str:  # fmt: skip
    """The content key of a step, *parent* being the content key before it (and
    *plan_parent* the plan key before it). A step that reads other stages needs *inputs*;
    without them (a record from before content keys) the chain follows the plan key from
    here on. Until the chains part, the content key is the plan key (not computed again)."""
    if reads_stages(op):
        if inputs is None:
            return plan_key
        return step_key(parent, op, keys, source_date_epoch, inputs)
    if parent == plan_parent:
        return plan_key
    return step_key(parent, op, keys, source_date_epoch)


def reads_stages(op: Op) -> bool:
    """Whether *op* reads the filesystem of another stage (then it has a content key)."""
    if isinstance(op, CopyOp):
        return isinstance(op.source, StageSource)
    if isinstance(op, ExecOp):
        return any(isinstance(m, BindMount) and m.from_stage is not None for m in op.mounts)
    return False


def base_key(base: Base, keys: dict[int, StageKeys]) -> str:
    if isinstance(base, ScratchBase):
        return digest_of({"v": KEY_VERSION, "base": "scratch"})
    if isinstance(base, StageBase):
        return keys[base.stage].final
    # an image is pinned by its manifest digest (which pins config and layers)
    return digest_of({"v": KEY_VERSION, "base": "image", "manifest": base.manifest_digest})


def op_fields(op: Op, keys: dict[int, StageKeys], inputs: str | None = None) -> dict[str, Any]:
    """The fields of *op*'s key; with *inputs*, what it reads from other stages is the
    content digest *inputs* instead of those stages' keys."""
    if isinstance(op, ExecOp):
        fields: dict[str, Any] = {
            "type": "exec",
            "args": list(op.args),  # the command line
            "env": list(op.env),  # environment incl. ARG values (not proxy args, as BuildKit)
            "user": op.user,  # resolved through the image's passwd at run time
            "workdir": op.workdir,
            "network": op.network,  # none vs host can change what a step produces
            "mounts": [_mount_fields(m, keys, inputs is not None) for m in op.mounts],
            "files": [list(f) for f in op.files],  # heredoc scripts
            "platform": op.platform,  # what the process runs as (emulated or not)
        }
        if inputs is not None:
            fields["stage-content"] = inputs  # what the bind mounts from stages hold
        return fields
    if isinstance(op, CopyOp):
        source = _source_fields(op.source, keys)
        if inputs is not None and isinstance(op.source, StageSource):
            source = {"stage-content": inputs}  # the selected files, not the stage's key
        return {
            "type": "add" if op.add else "copy",  # ADD extracts archives
            "source": source,
            "srcs": list(op.srcs),
            "dest": op.dest,
            "chown": op.chown,
            "chmod": op.chmod,
            "link": op.link,
        }
    assert isinstance(op, MkdirOp)
    return {"type": "mkdir", "path": op.path, "user": op.user}


def _source_fields(source: CopySource, keys: dict[int, StageKeys]) -> dict[str, Any]:
    if isinstance(source, ContextSource):
        return {"context": source.digest}  # content digest of the selected files
    if isinstance(source, StageSource):
        return {"stage": keys[source.stage].final}  # that stage's key, not its files
    if isinstance(source, ImageSource):
        return {"image": source.image.manifest_digest}
    if isinstance(source, InlineSource):
        return {"inline": [list(f) for f in source.files]}
    assert isinstance(source, UrlSource)
    return {"url": source.url, "content": source.digest}


def _mount_fields(mount: Mount, keys: dict[int, StageKeys], by_content: bool) -> dict[str, Any]:
    if isinstance(mount, CacheMount):
        # The content of a cache mount is deliberately not part of the key (as BuildKit).
        return {
            "type": "cache",
            "target": mount.target,
            "id": mount.id,
            "sharing": mount.sharing,
            "from": keys[mount.from_stage].final if mount.from_stage is not None else None,
            "source": mount.source,
            "mode": mount.mode,
            "uid": mount.uid,
            "gid": mount.gid,
            "readonly": mount.readonly,
        }
    if isinstance(mount, BindMount):
        if mount.from_stage is not None:
            # by content: the op's "stage-content" digest covers what is bound
            origin = {"stage": "content" if by_content else keys[mount.from_stage].final}
        elif mount.from_image is not None:
            origin = {"image": mount.from_image.manifest_digest}
        else:
            origin = {"context": mount.context_digest}
        return {
            "type": "bind",
            "target": mount.target,
            "source": mount.source,
            "from": origin,
            "rw": mount.readwrite,
        }
    if isinstance(mount, TmpfsMount):
        return {"type": "tmpfs", "target": mount.target, "size": mount.size}
    assert isinstance(mount, SecretMount)
    # Secret values never enter a key (they would leak through cache metadata).
    return {
        "type": "secret",
        "target": mount.target,
        "id": mount.id,
        "required": mount.required,
        "mode": mount.mode,
        "uid": mount.uid,
        "gid": mount.gid,
        "env": mount.env,
    }
