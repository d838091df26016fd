"""The output plug-in point: ``-o/--output type=…`` (and ``--push``), as buildx.

An :class:`Exporter` is registered by its ``type=`` name in the composition root
(:func:`kiln.build.exporters`), exactly like the cache backends: it parses the attributes
of one ``--output`` value into its own frozen spec before the build starts, and exports
the finished image from that spec. A parsed value stays bound to its exporter
(:class:`Output`), so the build treats every output alike. Adding an output type: one
module with a spec and an ``Exporter`` subclass, and one registration line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar

from kiln.attrs import Attrs, flag_error
from kiln.content import BlobLocator
from kiln.errors import UsageError
from kiln.exporter.image import BuildImages
from kiln.registry.client import RegistryClient
from kiln.registry.reference import Reference

S = TypeVar("S")

# buildx takes these per output; kiln compresses layers once, for every output
_COMPRESSION_ATTRS = {"compression", "compression-level", "force-compression"}


@dataclass(frozen=True, slots=True)
class ExportContext:
    """What exporters work with once the image is built."""

    images: BuildImages  # one per platform (see BuildImages.single / .top)
    client: RegistryClient
    locator: BlobLocator
    message: Callable[[str], None]
    scratch: Callable[[str], Path]  # a fresh private directory, by name prefix


class Exporter(ABC, Generic[S]):
    """One output type: a stateless parser and the export itself."""

    name: ClassVar[str]
    attributes: ClassVar[frozenset[str]]

    @abstractmethod
    def parse(self, attrs: Attrs, tags: tuple[str, ...]) -> S:
        """A typed spec (attributes already checked against :attr:`attributes`)."""

    @abstractmethod
    def export(self, spec: S, ctx: ExportContext) -> list[str]:
        """Write the output; the references pushed (``name:tag@digest``), if any."""

    def names(self, spec: S) -> tuple[str, ...]:
        """Image names the output uses (validated before the build starts)."""
        return ()

    def oci_mediatypes(self, spec: S) -> bool | None:
        """The media types the output's manifest uses; None: it writes no manifest."""
        return None

    def insecure_hosts(self, spec: S) -> frozenset[str]:
        return frozenset()

    def multi_platform_problem(self, spec: S) -> str | None:
        """Why the output cannot hold a multi-platform build (None: it can)."""
        return None

    def bind(self, attrs: Attrs, text: str, tags: tuple[str, ...]) -> OutputFlag:
        attrs.check(self.attributes, self.name)
        return Output(self, self.parse(attrs, tags), text)


class OutputFlag(Protocol):
    """One ``--output`` value bound to its exporter."""

    @property
    def text(self) -> str: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def oci_mediatypes(self) -> bool | None: ...
    @property
    def insecure_hosts(self) -> frozenset[str]: ...
    @property
    def multi_platform_problem(self) -> str | None: ...
    def export(self, ctx: ExportContext) -> list[str]: ...


class OutputType(Protocol):
    @property
    def name(self) -> str: ...
    def bind(self, attrs: Attrs, text: str, tags: tuple[str, ...]) -> OutputFlag: ...


@dataclass(frozen=True, slots=True)
class Output(Generic[S]):
    exporter: Exporter[S]
    spec: S
    text: str

    @property
    def names(self) -> tuple[str, ...]:
        return self.exporter.names(self.spec)

    @property
    def oci_mediatypes(self) -> bool | None:
        return self.exporter.oci_mediatypes(self.spec)

    @property
    def insecure_hosts(self) -> frozenset[str]:
        return self.exporter.insecure_hosts(self.spec)

    @property
    def multi_platform_problem(self) -> str | None:
        return self.exporter.multi_platform_problem(self.spec)

    def export(self, ctx: ExportContext) -> list[str]:
        return self.exporter.export(self.spec, ctx)


def image_names(attrs: Attrs, tags: tuple[str, ...]) -> tuple[str, ...]:
    """``name=a,b`` (quoted, as one attribute), each checked, or else the build's ``-t``
    tags (checked where ``-t`` is parsed)."""
    given = tuple(n for n in attrs.get("name").split(",") if n)
    for name in given:
        try:
            Reference.parse(name)
        except UsageError as exc:
            raise attrs.error(f"name: {exc.what}", hint=exc.hint) from exc
    return given or tags


def parse_output(text: str, tags: tuple[str, ...], exporters: Mapping[str, OutputType]
                 ) -> OutputFlag:  # fmt: skip
    """One ``--output`` value; a bare path means ``type=local,dest=<it>``."""
    if text == "-":
        raise UsageError("--output - (a tar on stdout) is not supported", hint="use dest=FILE")
    fail = flag_error("--output", text)
    if "=" not in text and "," not in text:
        attrs = Attrs({"type": "local", "dest": text}, fail)
    else:
        attrs = Attrs.parse(text, fail)
    exporter = attrs.plugin(exporters, "type")
    if set(attrs.values) & _COMPRESSION_ATTRS:
        raise attrs.error(
            "compression is set for the whole build, not per output",
            hint="use kiln build --compression gzip|zstd|uncompressed",
        )
    return exporter.bind(attrs, text, tags)


def parse_outputs(values: Sequence[str], tags: tuple[str, ...], push: bool,
                  exporters: Mapping[str, OutputType]) -> list[OutputFlag]:  # fmt: skip
    outputs = [parse_output(v, tags, exporters) for v in values]
    if push:
        if not tags:
            raise UsageError("--push needs at least one -t/--tag")
        outputs.append(parse_output("type=registry", tags, exporters))
    return outputs


def default_oci_mediatypes(outputs: Sequence[OutputFlag]) -> bool:
    """OCI media types unless every output that writes a manifest asks for Docker's."""
    flags = [f for f in (o.oci_mediatypes for o in outputs) if f is not None]
    return any(flags) if flags else True
