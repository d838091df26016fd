"""Content keys travel with the remote cache: a stage that reruns but makes the same files
leaves what reads it cached on a fresh machine, even after a fully cached build re-exported
the cache in between (the records keep what each step read)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.build import make_context

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS builder
COPY src/ /src/
RUN mkdir /public && echo static > /public/logo && cat /src/* > /build

FROM ${BASE}
COPY --from=builder /public /app/public
RUN ls /app/public > /app/listing
COPY --from=builder /build /app/build
"""


def texts(labels: list[str]) -> list[str]:
    return [label.split(" ", 2)[2] for label in labels]


@pytest.mark.parametrize("kind", ["local", "registry"])
def test_content_keys_survive_a_full_hit_re_export(
    kind: str, kiln, busybox_image: str, registry, tmp_path: Path
) -> None:
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"src/page.js": "v1\n"})
    base = ["--build-arg", f"BASE={busybox_image}"]
    if kind == "local":
        cache = tmp_path / "cache"
        flags = ["--cache-from", f"type=local,src={cache}",
                 "--cache-to", f"type=local,dest={cache},mode=max"]  # fmt: skip
    else:
        ref = f"{registry.host}/content/app:cache"
        flags = ["--cache-from", ref, "--cache-to", f"type=registry,ref={ref},mode=max"]
    kiln("build", *base, *flags, ctx, root=tmp_path / "cold").check()
    full = kiln("build", *base, *flags, ctx, root=tmp_path / "full").check()  # re-exports
    assert full.ran == []
    (ctx / "src" / "page.js").write_text("v2\n")
    partial = kiln("build", *base, *flags, ctx, root=tmp_path / "partial").check()
    assert texts(partial.ran) == [
        "COPY src/ /src/",
        "RUN mkdir /public && echo static > /public/logo && cat /src/* > /build",
        "COPY --from=builder /build /app/build",
    ]  # the runner's first two steps read unchanged files: cached by content
    assert texts(partial.cached) == [
        "COPY --from=builder /public /app/public", "RUN ls /app/public > /app/listing",
    ]  # fmt: skip
