"""The reference page's cache-mount workflows, offline and real: Go's build cache and pip's
download cache carried to a fresh machine (an empty KILN_ROOT) by ``--cache-to``.

The base is a Debian 12 image with golang-go and python3-pip (``debian_image``). Go: a
generated stdlib-only module of 40 packages; ``go build -v`` names every package it
compiles, so a restored build cache shows as one package compiled instead of all. pip:
real packages from PyPI (through the machine's proxy, with its CA bundle in the image);
pip logs ``Downloading`` for what it fetches and ``Using cached`` for what its cache held.
The packages are sdist-only, so what pip keeps is the wheels it built (``wheels/``): the
proxy here strips ``Cache-Control`` from PyPI's responses, so pip's HTTP cache would store
nothing on any builder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.fixtures.build import KilnRun
from tests.fixtures.gha import gha_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACKAGES = 40

GO_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/go-build \
    GOFLAGS=-mod=mod GOPROXY=off go build -v -o /app . 2> /compiled.txt && /app > /out.txt
"""


def go_package(n: int, version: int = 1) -> str:
    """A package of a few hundred lines: enough work for the compiler to be measured."""
    funcs = []
    for f in range(12):
        funcs.append(
            f"func F{f}(xs []int) int {{\n"
            f"\ttotal := {version}\n"
            "\tfor i, x := range xs {\n"
            f"\t\tswitch {{\n"
            f"\t\tcase x%{f + 2} == 0:\n\t\t\ttotal += x * {n + 1}\n"
            f"\t\tcase i%{f + 3} == 1:\n\t\t\ttotal -= i\n"
            "\t\tdefault:\n\t\t\ttotal ^= x << 1\n\t\t}\n\t}\n"
            f'\treturn total + len(fmt.Sprint("p{n}", {f}))\n}}\n'
        )
    body = "\n".join(funcs)
    calls = " + ".join(f"F{f}(xs)" for f in range(12))
    head = f'package p{n:02d}\n\nimport "fmt"\n\n'
    tail = f"// Sum is what main prints\nfunc Sum(xs []int) int {{ return {calls} }}\n"
    return f"{head}{body}\n{tail}"


def go_module(dest: Path, changed: int | None = None) -> Path:
    dest.mkdir(parents=True)
    (dest / "Dockerfile").write_text(GO_DOCKERFILE)
    (dest / "go.mod").write_text("module example.com/app\n\ngo 1.19\n")
    imports, sums = [], []
    for n in range(PACKAGES):
        pkg = dest / f"p{n:02d}"
        pkg.mkdir()
        (pkg / "p.go").write_text(go_package(n, 2 if n == changed else 1))
        imports.append(f'\t"example.com/app/p{n:02d}"')
        sums.append(f"p{n:02d}.Sum(xs)")
    (dest / "main.go").write_text(
        'package main\n\nimport (\n\t"fmt"\n' + "\n".join(imports) + "\n)\n\n"
        "func main() {\n\txs := []int{1, 2, 3, 4, 5, 6, 7, 8, 9}\n"
        f"\tfmt.Println({' + '.join(sums)})\n}}\n"
    )
    return dest


def compiled(out: Path) -> set[str]:
    """The packages of the module that ``go build -v`` compiled."""
    lines = (out / "compiled.txt").read_text().split()
    return {line for line in lines if line.startswith("example.com/app")}


def run_step(run: KilnRun) -> dict:
    (step,) = [s for s in run.metadata["steps"] if "go build" in s["step"] or "pip" in s["step"]]
    return step


def test_go_build_cache_travels_through_the_registry_cache(
    kiln, debian_image: str, registry, tmp_path: Path
):
    cache = f"{registry.host}/mounts/go:buildcache"
    flags = ["--build-arg", f"BASE={debian_image}", "--cache-from", cache,
             "--cache-to", f"type=registry,ref={cache},mode=max"]  # fmt: skip
    first = kiln("build", *flags, "-o", f"type=local,dest={tmp_path / 'o1'}",
                 go_module(tmp_path / "v1"), root=tmp_path / "m1", timeout=900).check()  # fmt: skip
    assert len(compiled(tmp_path / "o1")) == PACKAGES + 1  # every package and main
    (mount,) = first.metadata["cache_mounts"]
    assert mount["id"] == "/root/.cache/go-build" and mount["exported_bytes"] > 100_000

    # a fresh machine, one package changed: only it and main are compiled again
    second = kiln("build", *flags, "-o", f"type=local,dest={tmp_path / 'o2'}",
                  go_module(tmp_path / "v2", changed=7), root=tmp_path / "m2",
                  timeout=900).check()  # fmt: skip
    assert compiled(tmp_path / "o2") == {"example.com/app/p07", "example.com/app"}
    (mount,) = second.metadata["cache_mounts"]
    assert mount["restored_from"].startswith("registry ") and mount["export"] == "delta"
    assert mount["exported_bytes"] < first.metadata["cache_mounts"][0]["exported_bytes"] / 4
    assert (tmp_path / "o2" / "out.txt").read_text() != (tmp_path / "o1" / "out.txt").read_text()

    # without the mount in the cache, the same change compiles everything again
    bare = f"{registry.host}/mounts/go-bare:buildcache"
    kiln("build", "--build-arg", f"BASE={debian_image}", "--cache-to",
         f"type=registry,ref={bare},mode=max,cache-mounts=false", go_module(tmp_path / "b1"),
         root=tmp_path / "b1-root", timeout=900).check()  # fmt: skip
    kiln("build", "--build-arg", f"BASE={debian_image}", "--cache-from", bare,
         "-o", f"type=local,dest={tmp_path / 'ob'}", go_module(tmp_path / "b2", changed=7),
         root=tmp_path / "b2-root", timeout=900).check()  # fmt: skip
    assert len(compiled(tmp_path / "ob")) == PACKAGES + 1


PIP_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY requirements.txt /requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-build-isolation --no-compile --progress-bar off -r /requirements.txt \
    > /pip.log 2>&1 \
    || (cat /pip.log; false)
"""

REQUIREMENTS = ["docopt==0.6.2", "termcolor==1.1.0"]  # sdists: pip builds and caches wheels


def pip_context(dest: Path, requirements: list[str]) -> Path:
    dest.mkdir(parents=True)
    (dest / "Dockerfile").write_text(PIP_DOCKERFILE)
    (dest / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return dest


def downloads(out: Path) -> tuple[set[str], set[str]]:
    """The wheels pip downloaded and those it took from its cache, by project name."""
    fetched, cached = set(), set()
    for line in (out / "pip.log").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "Downloading":
            fetched.add(words[1].split("-")[0].lower())
        if len(words) >= 3 and words[:2] == ["Using", "cached"]:
            cached.add(words[2].split("-")[0].lower())
    return fetched, cached


@pytest.mark.parametrize("backend", ["registry", "local", "gha-v1", "gha-v2"])
def test_pip_downloads_only_the_new_requirement_on_a_fresh_machine(
    kiln, debian_image: str, registry, gha_server_factory, tmp_path: Path, backend: str
):
    env: dict[str, str] | None = None
    if backend == "registry":
        ref = f"{registry.host}/mounts/pip:buildcache"
        cache_from, cache_to = ref, f"type=registry,ref={ref},mode=max"
    elif backend == "local":  # the seed's local-cache workflow, without "Move cache"
        where = tmp_path / "cache"
        cache_from, cache_to = f"type=local,src={where}", f"type=local,dest={where},mode=max"
    else:  # kiln cache serve, as a runner exposes it
        server = gha_server_factory()
        env = gha_env(server, server.token("refs/heads/main"), backend[-1])
        cache_from, cache_to = "type=gha,scope=pip", "type=gha,scope=pip,mode=max"
    flags = ["--build-arg", f"BASE={debian_image}", "--cache-from", cache_from,
             "--cache-to", cache_to]  # fmt: skip
    kiln("build", *flags, "-o", f"type=local,dest={tmp_path / 'o1'}",
         pip_context(tmp_path / "v1", REQUIREMENTS), root=tmp_path / "m1", env=env,
         timeout=900).check()  # fmt: skip
    fetched, _ = downloads(tmp_path / "o1")
    assert fetched == {"docopt", "termcolor"}

    second = kiln("build", *flags, "-o", f"type=local,dest={tmp_path / 'o2'}",
                  pip_context(tmp_path / "v2", [*REQUIREMENTS, "wget==3.2"]),
                  root=tmp_path / "m2", env=env, timeout=900).check()  # fmt: skip
    fetched, cached = downloads(tmp_path / "o2")
    assert fetched == {"wget"}
    assert cached == {"docopt", "termcolor"}
    (mount,) = second.metadata["cache_mounts"]
    assert mount["id"] == "/root/.cache/pip" and mount["export"] == "delta"
