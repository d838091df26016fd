"""kiln's images run under a real Docker engine: pulled from a registry, and loaded from
kiln's ``type=docker`` archive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.fixtures.build import KilnRun, make_context
from tests.fixtures.docker import DockerEngine
from tests.fixtures.registry import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Kiln = Callable[..., KilnRun]

# Every line the container prints is computed by the build's RUN steps (or comes from the
# image config), so a wrong layer, a lost file or a config Docker misreads shows up.
DOCKERFILE = """FROM {base}
ARG NAME=kiln
RUN echo "hello from $NAME" > /greeting && echo $((6 * 7)) > /answer
WORKDIR /app
COPY data.txt ./
RUN cat /greeting /answer data.txt > report && rm /greeting \\
 && echo "runner:x:4321:4321::/app:/bin/sh" >> /etc/passwd && chown runner report
USER runner
ENV SUFFIX="the end"
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat report; id -un; pwd; test -e /greeting || echo \\"$SUFFIX\\""]
"""

EXPECTED = "hello from oracle\n42\ndata line\nrunner\n/app\nthe end\n"


@pytest.fixture
def context(tmp_path: Path, busybox_image: str) -> Path:
    return make_context(
        tmp_path / "ctx", DOCKERFILE.format(base=busybox_image), {"data.txt": "data line\n"}
    )


def test_docker_runs_a_pushed_image(
    kiln: Kiln,
    docker_engine: DockerEngine,
    registry: RegistryServer,
    context: Path,
) -> None:
    ref = f"{registry.host}/oracle/run:v1"
    run = kiln("build", "-t", ref, "--push", "--build-arg", "NAME=oracle", context).check()
    out = docker_engine.run("run", "--rm", "--network", "none", ref)
    assert out.stdout == EXPECTED
    # Docker pulled exactly what kiln pushed
    inspect = docker_engine.run(
        "image", "inspect", "--format", "{{.Id}} {{index .RepoDigests 0}}", ref
    ).stdout.split()
    assert inspect[0] == run.metadata["containerimage.config.digest"]
    assert inspect[1] == f"{registry.host}/oracle/run@{run.metadata['containerimage.digest']}"
    # the command line overrides the CMD, the ENTRYPOINT stays
    out = docker_engine.run("run", "--rm", "--network", "none", ref, "echo $SUFFIX; id -u")
    assert out.stdout == "the end\n4321\n"


def test_docker_loads_and_runs_a_docker_archive(
    kiln: Kiln, docker_engine: DockerEngine, context: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "img.tar"
    tag = "kiln-oracle/loaded:v1"
    run = kiln(
        "build", "-t", tag, "-o", f"type=docker,dest={archive}",
        "--build-arg", "NAME=oracle", context,
    ).check()  # fmt: skip
    loaded = docker_engine.run("load", "-i", archive)
    assert f"Loaded image: {tag}" in loaded.stdout
    image_id = docker_engine.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    assert image_id == run.metadata["containerimage.config.digest"]
    out = docker_engine.run("run", "--rm", "--network", "none", tag)
    assert out.stdout == EXPECTED
