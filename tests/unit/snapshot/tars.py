"""Hand-made layer tars for the unpacker's and the image writer's tests (stdlib tarfile as
an independent writer)."""

from __future__ import annotations

import io
import tarfile

Member = tuple[tarfile.TarInfo, bytes]


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    return info, data


def directory(name: str, mode: int = 0o755, **kw: object) -> Member:
    info, _ = reg(name, b"", mode)
    for key, value in kw.items():
        setattr(info, key, value)
    info.type = tarfile.DIRTYPE
    return info, b""


def link(name: str, target: str, *, hard: bool = False) -> Member:
    info, _ = reg(name, mode=0o777)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, b""


def tar(*members: Member) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
