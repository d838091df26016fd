"""kiln cache inspect: what a registry, local or gha cache holds (stages, steps, platforms,
cache mounts, sizes, times), read the way --cache-from reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.fixtures.build import make_context
from tests.fixtures.gha import gha_env
from tests.fixtures.registry import RegistryServer

pytestmark = pytest.mark.integration

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS deps
RUN --mount=type=cache,target=/root/.cache echo dep > /root/.cache/dep && echo x > /deps

FROM ${BASE}
COPY --from=deps /deps /deps
COPY app.txt /app.txt
"""


@pytest.mark.parametrize("kind", ["registry", "local", "gha"])
def test_inspect_each_source_kind(kiln, busybox_image: str, registry: RegistryServer,
                                  gha_server_factory, tmp_path: Path, kind: str):  # fmt: skip
    ctx = make_context(tmp_path / "ctx", DOCKERFILE, {"app.txt": "app\n"})
    env: dict[str, str] = {}
    if kind == "registry":
        ref = f"{registry.host}/inspect/app:cache"
        to, source = f"type=registry,ref={ref},mode=max", ref
    elif kind == "local":
        to, source = (
            f"type=local,dest={tmp_path / 'c'},mode=max",
            f"type=local,src={tmp_path / 'c'}",
        )
    else:
        server = gha_server_factory()
        token = server.token(("refs/heads/main", 3))
        env = gha_env(server, token, "2")
        to = "type=gha,mode=max,scope=app"
        source = f"type=gha,scope=app,url={server.url},token={token}"
    kiln("build", "--build-arg", f"BASE={busybox_image}", "--cache-to", to, ctx,
         root=tmp_path / "m1", env=env).check()  # fmt: skip

    shown = kiln("cache", "inspect", "--json", source, root=tmp_path / "m2").check()
    report = json.loads(shown.stdout)
    assert report["stages"] == ["deps", "stage-1"]
    assert [(s["stage"], s["step"], s["instruction"]) for s in report["steps"]] == [
        ("deps", 2, "RUN --mount=type=cache,target=/root/.cache echo dep > /root/.cache/dep "
                    "&& echo x > /deps"),
        ("stage-1", 2, "COPY --from=deps /deps /deps"),
        ("stage-1", 3, "COPY app.txt /app.txt"),
    ]  # fmt: skip
    assert len(report["platforms"]) == 1
    assert all(s["created"].endswith("Z") and s["layer_bytes"] > 0 for s in report["steps"])
    assert report["layer_bytes"] == sum(s["layer_bytes"] for s in report["steps"])
    (mount,) = report["cache_mounts"]
    assert mount["id"] == "/root/.cache" and mount["size"] == len("dep\n")
    assert mount["blobs"] == 1 and mount["updated"].endswith("Z")

    table = kiln("cache", "inspect", source, root=tmp_path / "m2").check().stdout
    assert "STAGE" in table and "COPY app.txt /app.txt" in table and "/root/.cache" in table
    if kind == "gha":
        assert token not in table


def test_inspect_a_missing_source_is_one_clear_error(kiln, registry: RegistryServer,
                                                     tmp_path: Path):  # fmt: skip
    ref = f"{registry.host}/inspect/none:cache"
    run = kiln("cache", "inspect", ref, root=tmp_path / "m")
    assert run.returncode == 1
    assert f"cannot inspect type=registry,ref={ref}" in run.stderr and "not found" in run.stderr
    assert "Traceback" not in run.stderr
