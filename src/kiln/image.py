"""The image configuration model (OCI image config plus Docker's extensions).

The frontend evolves an :class:`ImageConfig` instruction by instruction; the exporter
serialises it. Keys kiln does not model are kept verbatim in ``extra`` so that a base
image's config round-trips.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kiln.oci import Platform, canonical_json

HISTORY_COMMENT = "buildkit.dockerfile.v0"


@dataclass
class HistoryEntry:
    created_by: str
    empty_layer: bool
    created: str | None = None
    comment: str | None = HISTORY_COMMENT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.created:
            out["created"] = self.created
        out["created_by"] = self.created_by
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> HistoryEntry:
        return cls(
            created_by=str(raw.get("created_by", "")),
            empty_layer=bool(raw.get("empty_layer", False)),
            created=raw.get("created"),
            comment=raw.get("comment"),
        )


@dataclass
class ImageConfig:
    platform: Platform
    env: list[str] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    healthcheck: dict[str, Any] | None = None
    stop_signal: str | None = None
    onbuild: list[str] = field(default_factory=list)
    shell: list[str] | None = None
    args_escaped: bool | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)

    def clone(self) -> ImageConfig:
        return copy.deepcopy(self)

    # -- environment -------------------------------------------------------------
    def env_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def set_env(self, key: str, value: str) -> None:
        self.env = env_with(self.env, [f"{key}={value}"], replace=True)

    # -- serialisation -----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(self.extra_config)
        if self.user:
            cfg["User"] = self.user
        if self.exposed_ports:
            cfg["ExposedPorts"] = self.exposed_ports
        if self.env:
            cfg["Env"] = list(self.env)
        if self.entrypoint is not None:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            cfg["Cmd"] = list(self.cmd)
        if self.volumes:
            cfg["Volumes"] = self.volumes
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        if self.labels:
            cfg["Labels"] = dict(self.labels)
        if self.stop_signal:
            cfg["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            cfg["Healthcheck"] = self.healthcheck
        if self.onbuild:
            cfg["OnBuild"] = list(self.onbuild)
        if self.shell is not None:
            cfg["Shell"] = list(self.shell)
        if self.args_escaped is not None:
            cfg["ArgsEscaped"] = self.args_escaped
        out: dict[str, Any] = dict(self.extra)
        out["architecture"] = self.platform.architecture
        out["os"] = self.platform.os
        if self.platform.variant:
            out["variant"] = self.platform.variant
        if self.created:
            out["created"] = self.created
        out["config"] = cfg
        out["rootfs"] = {"type": "layers", "diff_ids": list(self.diff_ids)}
        out["history"] = [h.to_json() for h in self.history]
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ImageConfig:
        raw = dict(raw)
        cfg = dict(raw.pop("config", None) or {})
        rootfs = raw.pop("rootfs", None) or {}
        history = raw.pop("history", None) or []
        platform = Platform(
            str(raw.pop("os", "linux")),
            str(raw.pop("architecture", "amd64")),
            str(raw.pop("variant", "") or ""),
        )
        created = raw.pop("created", None)
        out = cls(
            platform=platform,
            env=list(cfg.pop("Env", None) or []),
            cmd=cfg.pop("Cmd", None),
            entrypoint=cfg.pop("Entrypoint", None),
            workdir=str(cfg.pop("WorkingDir", "") or ""),
            user=str(cfg.pop("User", "") or ""),
            labels=dict(cfg.pop("Labels", None) or {}),
            exposed_ports=dict(cfg.pop("ExposedPorts", None) or {}),
            volumes=dict(cfg.pop("Volumes", None) or {}),
            healthcheck=cfg.pop("Healthcheck", None),
            stop_signal=cfg.pop("StopSignal", None),
            onbuild=list(cfg.pop("OnBuild", None) or []),
            shell=cfg.pop("Shell", None),
            args_escaped=cfg.pop("ArgsEscaped", None),
            history=[HistoryEntry.from_json(h) for h in history],
            diff_ids=list(rootfs.get("diff_ids") or []),
            created=created,
        )
        out.extra = raw
        out.extra_config = cfg
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageConfig:
        return cls.from_json(json.loads(data))


def env_with(env: Iterable[str], pairs: Iterable[str], *, replace: bool) -> list[str]:
    """The ``K=V`` list *env* with every ``K=V`` of *pairs* set: a name already there is
    replaced in place when *replace* (ENV, a secret's ``env=``) and kept otherwise (build
    args under ENV); a new name is appended. The one way kiln builds an environment."""
    out = list(env)
    where: dict[str, int] = {}
    for i, item in enumerate(out):
        where.setdefault(item.partition("=")[0], i)
    for pair in pairs:
        name = pair.partition("=")[0]
        if name not in where:
            where[name] = len(out)
            out.append(pair)
        elif replace:
            out[where[name]] = pair
    return out
