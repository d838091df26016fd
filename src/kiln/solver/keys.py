"""Cache keys: a digest of everything that affects a step's filesystem result.

A key is ``sha256`` of the canonical JSON of a structure whose every field is an input of
the step; anything not listed here must not change what the step produces. Keys are
computed from the plan alone: no step runs and no layer is downloaded to compute them.
A ``COPY --from=<stage>`` is keyed by that stage's final key, not by its files.
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
KEY_VERSION = 2


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
    """Keys of every step of every planned stage (dependencies first)."""
    keys: dict[int, StageKeys] = {}
    for index in plan.needed_order():
        stage = plan.stages[index]
        parent = base_key(stage.base, keys)
        base = parent
        steps = []
        for step in stage.steps:
            fields = {
                "v": KEY_VERSION,
                "parent": parent,  # the filesystem the step starts from
                "op": op_fields(step.op, keys),  # what the step does, fully expanded
            }
            if source_date_epoch is not None:
                fields["epoch"] = source_date_epoch  # clamps the layer's file times
            parent = digest_of(fields)
            steps.append(parent)
        keys[index] = StageKeys(base, tuple(steps))
    return keys


def base_key(base: Base, keys: dict[int, StageKeys]) -> str:
    if isinstance(base, ScratchBase):
        return digest_of({"v": KEY_VERSION, "base": "scratch"})
    if isinstance(base, StageBase):
        return keys[base.stage].final
    # an image is pinned by its manifest digest (which pins config and layers)
    return digest_of({"v": KEY_VERSION, "base": "image", "manifest": base.manifest_digest})


def op_fields(op: Op, keys: dict[int, StageKeys]) -> dict[str, Any]:
    if isinstance(op, ExecOp):
        return {
            "type": "exec",
            "args": list(op.args),  # the command line
            "env": list(op.env),  # environment incl. ARG values (not proxy args, as BuildKit)
            "user": op.user,  # resolved through the image's passwd at run time
            "workdir": op.workdir,
            "network": op.network,  # none vs host can change what a step produces
            "mounts": [_mount_fields(m, keys) for m in op.mounts],
            "files": [list(f) for f in op.files],  # heredoc scripts
        }
    if isinstance(op, CopyOp):
        return {
            "type": "add" if op.add else "copy",  # ADD extracts archives
            "source": _source_fields(op.source, keys),
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


def _mount_fields(mount: Mount, keys: dict[int, StageKeys]) -> dict[str, Any]:
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
            origin = {"stage": keys[mount.from_stage].final}
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
