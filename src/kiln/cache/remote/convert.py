"""Recompressing layers for a cache export (``compression=…,force-compression=true``).

A converted layer has the same diff ID and a new blob; the conversion streams (decompress,
recompress) and is deterministic, so converting the same layer twice gives the same digest.
"""

from __future__ import annotations

import dataclasses

from kiln.archive.compress import compressor, decompressing_reader
from kiln.cache.records import CacheEntry, MountLayer, MountRecord
from kiln.cache.remote.base import CacheContext, ExportOptions
from kiln.oci import Descriptor, Layer, compression_of, layer_media_type

_CHUNK = 1 << 20


def convert_layer(layer: Layer, compression: str, level: int | None, ctx: CacheContext) -> Layer:
    if compression_of(layer.blob.media_type) == compression:
        return layer
    ctx.locator.fetch(layer.blob)
    source = ctx.store.path(layer.digest)
    comp = compressor(compression, level)
    with source.open("rb") as raw, ctx.store.writer() as sink:
        reader = decompressing_reader(raw, compression_of(layer.blob.media_type))
        while chunk := reader.read(_CHUNK):
            sink.write(comp.compress(chunk))
        sink.write(comp.flush())
    blob = Descriptor(layer_media_type(compression), sink.digest, sink.size)
    return Layer(blob, layer.diff_id)


def convert_layers(
    entries: list[CacheEntry], options: ExportOptions, ctx: CacheContext
) -> list[CacheEntry]:
    """With ``force-compression``, every layer in *compression*; otherwise unchanged."""
    if not options.force_compression or options.compression is None:
        return entries
    done: dict[str, Layer] = {}
    out = []
    for entry in entries:
        if entry.layer is None:
            out.append(entry)
            continue
        if entry.layer.digest not in done:
            done[entry.layer.digest] = convert_layer(
                entry.layer, options.compression, options.compression_level, ctx
            )
        out.append(dataclasses.replace(entry, layer=done[entry.layer.digest]))
    return out


def convert_mounts(mounts: list[MountRecord], ctx: CacheContext, *, oci: bool) -> list[MountRecord]:
    """Mount blobs are zstd (kiln alone reads them); Docker media types have no zstd, so
    for ``oci-mediatypes=false`` they become gzip (same diff IDs, same chain)."""
    if oci:
        return mounts
    out = []
    for record in mounts:
        layers = tuple(
            MountLayer(convert_layer(m.layer, "gzip", None, ctx), m.content)
            if compression_of(m.layer.blob.media_type) == "zstd"
            else m
            for m in record.layers
        )
        out.append(dataclasses.replace(record, layers=layers))
    return out
