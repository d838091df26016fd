"""kiln.differ: overlay upper dir → compressed, digested OCI layer blob.

Public API: :func:`write_layer`; compression helpers shared with the unpack side live in
:mod:`kiln.archive.compress`, the tar format in :mod:`kiln.archive.tarstream`.
"""

from __future__ import annotations

from kiln.archive.compress import compressor, decompressing_reader
from kiln.differ.layer import write_layer

__all__ = ["compressor", "decompressing_reader", "write_layer"]
