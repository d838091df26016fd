"""``--cache-from`` / ``--cache-to`` values, parsed and bound to their backend.

``type=T,k=v,...`` (or a bare reference, meaning ``type=registry,ref=<it>``) is split by
the one attribute grammar, ``T`` picks the backend from the registry the composition root
passes in, and the backend parses the rest into its own frozen spec, kept together with
the backend, so the build handles every backend alike without knowing its spec type.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiln.attrs import Attrs, flag_error, redact
from kiln.cache.remote.base import CacheType, ExportFlag, ImportFlag


def _attrs(text: str, flag: str, backends: Mapping[str, CacheType]
           ) -> tuple[CacheType, Attrs, str]:  # fmt: skip
    if "=" not in text:
        text = f"type=registry,ref={text}"
    attrs = Attrs.parse(text, flag_error(flag, text))
    backend = attrs.plugin(backends, "cache type")
    return backend, attrs, redact(text)  # the text shown in messages: no credential


def parse_cache_from(text: str, backends: Mapping[str, CacheType]) -> ImportFlag:
    backend, attrs, text = _attrs(text, "--cache-from", backends)
    return backend.bind_import(attrs, text)


def parse_cache_to(text: str, backends: Mapping[str, CacheType]) -> ExportFlag:
    backend, attrs, text = _attrs(text, "--cache-to", backends)
    return backend.bind_export(attrs, text)
