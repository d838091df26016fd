"""``type=registry`` / ``type=image`` (and ``--push``): the image pushed under every name.

A multi-platform build pushes each platform's image by digest, then the index under every
name (last: a tag never names an index whose images are missing). ``push-by-digest=true``
pushes untagged (the names give the repositories), for ``kiln imagetools create`` to merge
the images of several runners; the references reported are ``repo@digest``
(``name-canonical`` is accepted: they always are canonical).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.attrs import Attrs
from kiln.exporter.base import ExportContext, Exporter, image_names
from kiln.registry.push import push_manifest
from kiln.registry.reference import Reference
from kiln.timing import timed

_ATTRS = frozenset({"name", "push", "oci-mediatypes", "registry.insecure", "push-by-digest",
                    "name-canonical"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class RegistryOutput:
    names: tuple[str, ...]
    push: bool = True
    oci_mediatypes: bool = True
    insecure: bool = False
    by_digest: bool = False


class RegistryExporter(Exporter[RegistryOutput]):
    """``type=registry``: push by default (``type=image`` pushes only with push=true)."""

    name = "registry"
    attributes = _ATTRS
    push_default = True

    def parse(self, attrs: Attrs, tags: tuple[str, ...]) -> RegistryOutput:
        names = image_names(attrs, tags)
        push = attrs.boolean("push", self.push_default)
        if push and not names:
            raise attrs.error("no image name to push", hint="give one with -t NAME or name=NAME")
        attrs.boolean("name-canonical", False)  # checked; references are canonical anyway
        return RegistryOutput(names, push, attrs.boolean("oci-mediatypes", True),
                              attrs.boolean("registry.insecure", False),
                              attrs.boolean("push-by-digest", False))  # fmt: skip

    def names(self, spec: RegistryOutput) -> tuple[str, ...]:
        return spec.names

    def oci_mediatypes(self, spec: RegistryOutput) -> bool:
        return spec.oci_mediatypes

    def insecure_hosts(self, spec: RegistryOutput) -> frozenset[str]:
        if not spec.insecure:
            return frozenset()
        return frozenset(Reference.parse(n).registry for n in spec.names)

    @timed("push")
    def export(self, spec: RegistryOutput, ctx: ExportContext) -> list[str]:
        if not spec.push:
            return []
        ctx.message(f"pushing {', '.join(spec.names)}")
        names = [Reference.parse(n) for n in spec.names]
        repos = list(dict.fromkeys(n.repo_ref for n in names))
        per_platform = ctx.images.per_platform(spec.oci_mediatypes)
        untagged = ctx.images.multi or spec.by_digest  # images by digest; the top one after
        for _platform, art in per_platform:
            targets = [r.with_digest(art.digest) for r in repos] if untagged else names
            push_manifest(ctx.client, targets, [(x.blob, None) for x in art.layers]
                          + [(art.config_desc, art.config)], art.manifest,
                          art.manifest_desc.media_type, ctx.locator)  # fmt: skip
        data, desc = ctx.images.top(spec.oci_mediatypes)
        if spec.by_digest:
            if ctx.images.multi:
                for repo in repos:
                    ctx.client.put_manifest(repo.with_digest(desc.digest), data, desc.media_type)
            return [f"{repo.name}@{desc.digest}" for repo in repos]
        if ctx.images.multi:
            for name in names:
                ctx.client.put_manifest(name, data, desc.media_type)
        return [f"{n.name}:{n.tag_or_default}@{desc.digest}" for n in names]


class ImageExporter(RegistryExporter):
    """``type=image``: as ``registry``, but pushes only with ``push=true``."""

    name = "image"
    push_default = False
