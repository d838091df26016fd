"""What a cache key was made of, in a form small and safe enough to export.

A :class:`KeyDescription` travels with every step record (the local store, every
exported cache config as kiln's own ``kiln.about`` field), so that a later build that
misses can compare its step with the closest cached one and say which input differs.

It names the step (stage, position, the instruction as written — never expanded, so no
build-arg value is in it), the platform, the key it started from and, for the first step
of a stage, the base. Every other input is a short fingerprint under its name: the
command, user, working directory, each mount, the copy's source and options, and each
environment variable (``env``; those that are build args listed in ``args``). A
fingerprint is the first 32 bits of a digest of the name and value: it tells two values
apart, and says no more about a value than the cache key itself does. Secret values are
never part of a key or of its description. Files copied from the build context are
described by a tree (:mod:`kiln.source.tree`) stored once per cache under ``tree``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.oci import is_digest

_TEXT_MAX = 200


def value_print(name: str, value: object) -> str:
    """The fingerprint of input *name* having *value*."""
    text = json.dumps([name, value], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class KeyDescription:
    stage: str  # the stage's name (or its number) as progress shows it
    step: int  # position in the stage, FROM being 1
    text: str  # the instruction as written
    platform: str
    parent: str  # the key the step started from
    base: str = ""  # first step of a stage: "image <digest>", "stage <name>" or "scratch"
    inputs: Mapping[str, str] = field(default_factory=dict)  # input name → fingerprint
    env: Mapping[str, str] = field(default_factory=dict)  # variable → fingerprint
    args: frozenset[str] = frozenset()  # the variables that are build args
    tree: str = ""  # the digest of the context files the step reads, if it reads some

    @property
    def slot(self) -> str:
        """Where the step is in its Dockerfile: what a later build's step is compared with."""
        return f"{self.stage}#{self.step}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.stage,
            "step": self.step,
            "text": self.text,
            "platform": self.platform,
            "parent": self.parent,
            "inputs": dict(self.inputs),
        }
        if self.base:
            out["base"] = self.base
        if self.env:
            out["env"] = dict(self.env)
        if self.args:
            out["args"] = sorted(self.args)
        if self.tree:
            out["tree"] = self.tree
        return out

    @classmethod
    def from_json(cls, raw: Any) -> KeyDescription:
        """Raises ValueError (or KeyError, TypeError) on a malformed description."""
        if not isinstance(raw, dict):
            raise ValueError("a key description is not an object")
        step = raw["step"]
        if type(step) is not int or step < 1:
            raise ValueError("step is not a position")
        parent, tree = _text(raw, "parent"), _text(raw, "tree")
        if not is_digest(parent) or (tree and not is_digest(tree)):
            raise ValueError("parent or tree is not a digest")
        return cls(
            stage=_text(raw, "stage"),
            step=step,
            text=_text(raw, "text")[:_TEXT_MAX],
            platform=_text(raw, "platform"),
            parent=parent,
            base=_text(raw, "base"),
            inputs=_prints(raw.get("inputs", {})),
            env=_prints(raw.get("env", {})),
            args=frozenset(str(a) for a in raw.get("args", [])),
            tree=tree,
        )


def shorten(text: str) -> str:
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 1] + "…"


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _prints(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ValueError("fingerprints are not an object")
    return {str(k): str(v) for k, v in raw.items()}
