"""Which steps rerun after a change: kiln keeps at least every step BuildKit keeps.

A stage that reruns but produces the same files leaves cached what reads them: BuildKit
keys ``COPY --from=<stage>`` and ``RUN --mount=type=bind,from=<stage>`` by a checksum of
the selected paths once the source is built; kiln falls back to the same content key
when the fast plan key misses. Both builders build each Dockerfile, then again after one
source file changed; the steps each one reports cached are compared.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.docker import DockerEngine

pytestmark = pytest.mark.integration

NEXT_STYLE = """\
ARG BASE={base}
FROM ${{BASE}} AS deps
COPY package.json /app/
RUN cd /app && echo "deps of $(cat package.json)" > node_modules.txt

FROM ${{BASE}} AS builder
COPY --from=deps /app/node_modules.txt /app/
COPY src/ /app/src/
RUN mkdir -p /app/public /app/.next && echo static > /app/public/logo.svg \\
 && cat /app/src/* > /app/.next/build.txt

FROM ${{BASE}} AS runner
RUN mkdir -p /app && echo runner > /app/role
COPY --from=builder /app/public /app/public
RUN mkdir /app/.next-cache
COPY --from=builder /app/.next /app/.next
RUN ls -R /app > /app/listing
"""

WHEELS = """\
ARG BASE={base}
FROM ${{BASE}} AS builder
COPY requirements.txt setup.cfg /src/
RUN mkdir /wheels && sed 's/$/.whl/' /src/requirements.txt > /wheels/index \\
 && wc -c < /src/setup.cfg > /build-log

FROM ${{BASE}}
RUN --mount=type=bind,target=/wheels,source=/wheels,from=builder cp /wheels/index /installed
RUN echo after > /after
"""


def buildkit_steps(output: str) -> tuple[set[str], set[str]]:
    """The steps BuildKit's plain progress shows (``stage TEXT``), and those CACHED."""
    names: dict[str, str] = {}
    for line in output.splitlines():
        m = re.match(r"#(\d+) \[(\S+) +\d+/\d+\] (.+)$", line)
        if m and not m.group(3).startswith("FROM "):
            names[m.group(1)] = " ".join(f"{m.group(2)} {m.group(3)}".split())
    cached = {m.group(1) for m in re.finditer(r"^#(\d+) CACHED$", output, re.M)}
    return set(names.values()), {names[n] for n in cached if n in names}


def kiln_steps(labels: list[str]) -> set[str]:
    """``stage n/m TEXT`` → ``stage TEXT`` (the naming of :func:`buildkit_steps`; runs of
    spaces are one, as BuildKit joins continued lines with two)."""
    out = set()
    for label in labels:
        stage, _, rest = label.partition(" ")
        out.add(" ".join(f"{stage} {rest.partition(' ')[2]}".split()))
    return out


def both_rebuild(kiln, docker: DockerEngine, ctx: Path, tmp_path: Path, change: dict[str, str]
                 ) -> tuple[set[str], set[str], set[str]]:  # fmt: skip
    """Build, change *change*, build again: what BuildKit kept cached and reran, and what
    kiln reran, in the second build."""
    root = tmp_path / "kiln-root"
    docker.build(ctx, "kiln-hits/x:1")
    kiln("build", ctx, root=root).check()
    for rel, content in change.items():
        (ctx / rel).write_text(content)
    second = docker.build(ctx, "kiln-hits/x:2")
    run = kiln("build", ctx, root=root).check()
    shown, cached = buildkit_steps(second.stdout + second.stderr)
    return cached, shown - cached, kiln_steps(run.ran)


def test_next_style_runner_keeps_what_did_not_change(
    kiln, docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    ctx = make_context(tmp_path / "ctx", NEXT_STYLE.format(base=busybox_image), {
        "package.json": '{"name": "web"}\n', "src/page.js": "v1\n", "src/lib.js": "lib\n",
    })  # fmt: skip
    kept, rerun, ours = both_rebuild(kiln, docker_engine, ctx, tmp_path,
                                     {"src/page.js": "v2\n"})  # fmt: skip
    expected = {
        "deps COPY package.json /app/",
        'deps RUN cd /app && echo "deps of $(cat package.json)" > node_modules.txt',
        "builder COPY --from=deps /app/node_modules.txt /app/",
        "runner RUN mkdir -p /app && echo runner > /app/role",
        "runner COPY --from=builder /app/public /app/public",  # the same files: kept
        "runner RUN mkdir /app/.next-cache",
    }
    assert expected <= kept, kept  # the oracle agrees on what stays cached
    assert ours <= rerun, sorted(ours - rerun)  # kiln reruns nothing BuildKit keeps
    assert "runner COPY --from=builder /app/.next /app/.next" in ours  # that did change


def test_a_bind_mount_of_unchanged_wheels_stays_cached(
    kiln, docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    ctx = make_context(tmp_path / "ctx", WHEELS.format(base=busybox_image), {
        "requirements.txt": "flask\nrequests\n", "setup.cfg": "[metadata]\nname = app\n",
    })  # fmt: skip
    kept, rerun, ours = both_rebuild(kiln, docker_engine, ctx, tmp_path,
                                     {"setup.cfg": "[metadata]\nname = app2\n"})  # fmt: skip
    bound = "stage-1 RUN --mount=type=bind,target=/wheels,source=/wheels,from=builder cp " \
        "/wheels/index /installed"  # fmt: skip
    assert {bound, "stage-1 RUN echo after > /after"} <= kept, kept
    assert ours <= rerun, sorted(ours - rerun)
    assert any("builder RUN mkdir /wheels" in step for step in ours)  # the builder did rerun
