"""Image tarballs: an OCI image layout (``type=oci``) or Docker's archive (``type=docker``).

Both are written as one tar holding ``blobs/sha256/...`` plus the index files; the
Docker variant adds ``manifest.json`` (which ``docker load`` reads), so one file serves
both tools. Written to a temporary name and renamed: a failed export leaves no partial file.
A multi-platform build's OCI archive holds every platform's image and the index over them
(``index.json`` names the index); Docker's archive holds one image, so it refuses one, as
buildx does.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kiln.attrs import Attrs
from kiln.content import BlobLocator
from kiln.errors import KilnError
from kiln.exporter.base import ExportContext, Exporter, image_names
from kiln.exporter.image import BuildImages
from kiln.oci import OCI_INDEX, Descriptor, digest_hex
from kiln.registry.reference import Reference

_EPOCH = 0


@dataclass(frozen=True, slots=True)
class TarOutput:
    kind: str  # "oci" | "docker"
    dest: str
    names: tuple[str, ...] = ()
    oci_mediatypes: bool = True


class OciArchiveExporter(Exporter[TarOutput]):
    """``type=oci,dest=FILE``: an OCI image layout in a tar."""

    name = "oci"
    attributes = frozenset({"dest", "name", "oci-mediatypes"})

    def parse(self, attrs: Attrs, tags: tuple[str, ...]) -> TarOutput:
        names = image_names(attrs, tags)
        return TarOutput(self.name, attrs.required("dest", self.name), names,
                         attrs.boolean("oci-mediatypes", True))  # fmt: skip

    def names(self, spec: TarOutput) -> tuple[str, ...]:
        return spec.names

    def oci_mediatypes(self, spec: TarOutput) -> bool:
        return spec.oci_mediatypes

    def export(self, spec: TarOutput, ctx: ExportContext) -> list[str]:
        ctx.message(f"writing {spec.kind} archive {spec.dest}")
        write_image_tar(ctx.images, spec.oci_mediatypes, Path(spec.dest), kind=spec.kind,
                        names=spec.names, locator=ctx.locator)  # fmt: skip
        return []


class DockerArchiveExporter(OciArchiveExporter):
    """``type=docker,dest=FILE``: the same tar plus ``manifest.json``, for ``docker load``."""

    name = "docker"

    def multi_platform_problem(self, spec: TarOutput) -> str | None:
        return ("type=docker holds one image: `docker load` cannot take a multi-platform "
                "index")  # fmt: skip


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = _EPOCH
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = _EPOCH
    tar.addfile(info)


def _ref_name(name: str) -> tuple[str, str]:
    ref = Reference.parse(name)
    tag = ref.tag_or_default
    return str(ref if ref.tag else ref.with_tag(tag)), tag


def write_image_tar(
    images: BuildImages, oci: bool, dest: Path, *, kind: str, names: tuple[str, ...],
    locator: BlobLocator,
) -> None:  # fmt: skip
    dest = dest.absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.kiln-tmp")
    try:
        with (
            tmp.open("wb") as fh,
            tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _write(tar, images, oci, kind, names, locator)
        os.replace(tmp, dest)
    except OSError as exc:
        raise KilnError(f"cannot write {dest}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def _write(
    tar: tarfile.TarFile, images: BuildImages, oci: bool, kind: str, names: tuple[str, ...],
    locator: BlobLocator,
) -> None:  # fmt: skip
    _add_dir(tar, "blobs")
    _add_dir(tar, "blobs/sha256")
    written: set[str] = set()

    def add_bytes(data: bytes, desc: Descriptor) -> None:
        if desc.digest not in written:
            written.add(desc.digest)
            _add_bytes(tar, f"blobs/sha256/{digest_hex(desc.digest)}", data)

    for _platform, art in images.per_platform(oci):
        for layer in art.layers:
            if layer.digest in written:
                continue
            written.add(layer.digest)
            locator.fetch(layer.blob)
            path = locator.store.path(layer.digest)
            tar.add(str(path), arcname=f"blobs/sha256/{digest_hex(layer.digest)}",
                    recursive=False, filter=_normalise)  # fmt: skip
        add_bytes(art.config, art.config_desc)
        add_bytes(art.manifest, art.manifest_desc)
    top, top_desc = images.top(oci)
    add_bytes(top, top_desc)
    _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    manifests = []
    refs = [_ref_name(n) for n in names] or [("", "")]
    for full, tag in refs:
        annotations = {}
        if full:
            annotations = {
                "io.containerd.image.name": full,
                "org.opencontainers.image.ref.name": tag,
            }
        manifests.append(
            Descriptor(top_desc.media_type, top_desc.digest, top_desc.size, annotations).to_json()
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    _add_bytes(tar, "index.json", json.dumps(index).encode())
    if kind == "docker":
        art = images.single().get(oci)
        manifest = [
            {
                "Config": f"blobs/sha256/{digest_hex(art.config_desc.digest)}",
                "RepoTags": [full for full, _ in refs if full],
                "Layers": [f"blobs/sha256/{digest_hex(layer.digest)}" for layer in art.layers],
            }
        ]
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = _EPOCH
    info.mode = 0o644
    return info
