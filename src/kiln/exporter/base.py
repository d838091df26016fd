"""Outputs (``-o/--output``, ``--push``) parsed at the edge into typed specs.

As buildx: ``type=registry`` (or ``type=image,push=true``) pushes every ``-t`` tag (or
``name=``); ``type=oci,dest=F`` / ``type=docker,dest=F`` write image tarballs;
``type=local,dest=D`` writes the root filesystem; a bare path means ``type=local``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from kiln.errors import UsageError


@dataclass(frozen=True, slots=True)
class RegistryOutput:
    names: tuple[str, ...]
    push: bool = True
    oci_mediatypes: bool = True
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class TarOutput:
    kind: str  # "oci" | "docker"
    dest: str
    names: tuple[str, ...] = ()
    oci_mediatypes: bool = True


@dataclass(frozen=True, slots=True)
class LocalOutput:
    dest: str


Output = RegistryOutput | TarOutput | LocalOutput

_ATTRS = {
    "registry": {"name", "push", "oci-mediatypes", "registry.insecure"},
    "image": {"name", "push", "oci-mediatypes", "registry.insecure"},
    "oci": {"dest", "name", "oci-mediatypes"},
    "docker": {"dest", "name", "oci-mediatypes"},
    "local": {"dest"},
}
# buildx takes these per output; kiln compresses layers once, for every output
_COMPRESSION_ATTRS = {"compression", "compression-level", "force-compression"}


def split_attrs(text: str, *, flag: str) -> dict[str, str]:
    """``k=v,k2="a,b"`` → dict (CSV quoting, as buildx), rejecting repeats and bare words."""
    out: dict[str, str] = {}
    try:
        fields = next(csv.reader([text], skipinitialspace=True)) if text else []
    except csv.Error as exc:
        raise UsageError(f"{flag} {text!r}: {exc}") from exc
    for item in fields:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise UsageError(
                f"{flag} {text!r}: {item!r} is not key=value",
                hint=f"write {flag} type=<type>,key=value,...",
            )
        if key in out:
            raise UsageError(f"{flag} {text!r}: {key} is given twice")
        out[key] = value
    return out


def parse_bool(value: str, *, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", ""):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise UsageError(f"{what} must be true or false, not {value!r}")


def parse_output(text: str, tags: tuple[str, ...]) -> Output:
    if text == "-" or ("=" not in text and "," not in text):
        if text == "-":
            raise UsageError("--output - (a tar on stdout) is not supported", hint="use dest=FILE")
        return LocalOutput(text)
    attrs = split_attrs(text, flag="--output")
    kind = attrs.pop("type", "")
    if kind not in _ATTRS:
        raise UsageError(
            f"--output {text!r}: unknown type {kind!r}",
            hint="known types: " + ", ".join(sorted(_ATTRS)),
        )
    if set(attrs) & _COMPRESSION_ATTRS:
        raise UsageError(
            f"--output {text!r}: compression is set for the whole build, not per output",
            hint="use kiln build --compression gzip|zstd|uncompressed",
        )
    unknown = sorted(set(attrs) - _ATTRS[kind])
    if unknown:
        raise UsageError(
            f"--output {text!r}: unknown attribute {unknown[0]!r} for type={kind}",
            hint="known: " + ", ".join(sorted(_ATTRS[kind])),
        )
    names = tuple(n for n in attrs.get("name", "").split(",") if n) or tags
    oci = parse_bool(attrs.get("oci-mediatypes", "true"), what="oci-mediatypes")
    if kind in ("registry", "image"):
        push = parse_bool(attrs.get("push", "true" if kind == "registry" else "false"), what="push")
        if push and not names:
            raise UsageError(
                f"--output {text!r}: no image name to push",
                hint="give one with -t NAME or name=NAME",
            )
        insecure = parse_bool(attrs.get("registry.insecure", "false"), what="registry.insecure")
        return RegistryOutput(names, push, oci, insecure)
    dest = attrs.get("dest", "")
    if not dest:
        raise UsageError(
            f"--output {text!r}: dest is required for type={kind}",
            hint=f"write --output type={kind},dest=PATH",
        )
    if kind == "local":
        return LocalOutput(dest)
    return TarOutput(kind, dest, names, oci)


def parse_outputs(values: list[str], tags: tuple[str, ...], push: bool) -> list[Output]:
    outputs = [parse_output(v, tags) for v in values]
    if push:
        if not tags:
            raise UsageError("--push needs at least one -t/--tag")
        outputs.append(RegistryOutput(tags))
    return outputs
