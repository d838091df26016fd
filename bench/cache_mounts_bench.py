"""Benchmark: ``RUN --mount=type=cache`` contents carried to a fresh machine, kiln against
BuildKit with and without the cache dance.

Scenario "a dependency changed, fresh machine", per fixture (Go: a generated stdlib-only
module of 40 packages, one package's source changed; pip: sdist-only PyPI packages, one
requirement added). Every variant is timed as a whole command (push of the image included),
median of ``--rounds`` rounds, the variants interleaved within each round:

  kiln mounts      fresh KILN_ROOT, ``--cache-from R1 --cache-to type=registry,ref=R1,mode=max``
                   (R1 exported by a v1 build, mounts included)
  kiln no-mounts   the same with R2, exported and re-exported with ``cache-mounts=false``
  BuildKit         fresh engine (``docker builder prune -af`` + every image removed),
                   ``docker build --cache-from R3`` (inline cache of the v1 image) + push
  BuildKit dance   what reproducible-containers/buildkit-cache-dance does with plain docker:
                   inject the "CI cache" tar into the cache mount (a build with COPY + tar -x),
                   the real build + push, extract the mount again (build, create, cp)

and, on one KILN_ROOT that has built v1 (a machine whose state persists), the RUN forced
to rerun (a ``--build-arg REV`` it uses) without changing the mount, exporting with the
mounts and with ``cache-mounts=false``: what the export of an unchanged mount costs.

Untimed: the Debian base image (``scripts/debian-rootfs``, built and pushed by kiln), the
v1 builds and exports (once per fixture, to one cache ref per round so that no round
sees another's export), the engine reset before each BuildKit variant, the dance's "CI
cache" restore and save (actions/cache's part). BuildKit is Docker's built-in (Debian
docker.io, ``DOCKER_BUILDKIT=1``, no buildx), its dockerd started here on its own data root.

    sudo .venv/bin/python bench/cache_mounts_bench.py [--rounds 3] [--fixtures go,pip]
                                                      [--skip-docker]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_bench import DOCKER, dockerd
from common import REPO, Run, kiln, local_registry, workdir

# ---------------------------------------------------------------------------- fixtures

GO_PACKAGES = 40
GO_FUNCS = 30  # per package: ~450 lines each

GO_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
WORKDIR /src
COPY . .
ARG REV=0
RUN --mount=type=cache,target=/root/.cache/go-build \
    echo "$REV" > /rev && \
    GOFLAGS=-mod=mod GOPROXY=off go build -v -o /app . 2> /compiled.txt && /app > /out.txt
"""

PIP_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY requirements.txt /requirements.txt
ARG REV=0
RUN --mount=type=cache,target=/root/.cache/pip \
    echo "$REV" > /rev && \
    pip install --no-build-isolation --no-compile --progress-bar off -r /requirements.txt \
    > /pip.log 2>&1 || (cat /pip.log; false)
"""

# sdist-only on PyPI (checked: pip downloads the .tar.gz/.zip for CPython 3.11), each built
# by Debian 12's setuptools 66 without network; pip's wheel cache keeps what it built. The
# proxy here strips Cache-Control, so pip's HTTP cache stores nothing: downloads repeat.
PIP_V1 = [
    "docopt==0.6.2", "termcolor==1.1.0", "future==0.18.3", "jieba==0.42.1",
    "pyperclip==1.8.2", "sgmllib3k==1.0.0", "jsmin==3.0.1", "antlr4-python3-runtime==4.9.3",
    "pypika==0.48.9", "progress==1.6", "pathtools==0.1.2", "paho-mqtt==1.6.1",
    "intervaltree==3.1.0", "pyinotify==0.9.6", "pyjsparser==2.7.1", "htmlmin==0.1.12",
    "cssmin==0.2.0", "tinysegmenter==0.3", "snownlp==0.12.3", "langdetect==1.0.9",
    "promise==2.3", "hanziconv==0.3.2", "args==0.1.0", "clint==0.5.1",
    # wheels they depend on, pinned
    "six==1.17.0", "sortedcontainers==2.4.0",
]  # fmt: skip
PIP_V2 = [*PIP_V1, "wget==3.2"]


def go_package(n: int, version: int) -> str:
    funcs = []
    for f in range(GO_FUNCS):
        funcs.append(
            f"func F{f}(xs []int) int {{\n"
            f"\ttotal := {version}\n"
            "\tfor i, x := range xs {\n"
            "\t\tswitch {\n"
            f"\t\tcase x%{f + 2} == 0:\n\t\t\ttotal += x * {n + 1}\n"
            f"\t\tcase i%{f + 3} == 1:\n\t\t\ttotal -= i\n"
            "\t\tdefault:\n\t\t\ttotal ^= x << 1\n\t\t}\n\t}\n"
            f'\treturn total + len(fmt.Sprint("p{n}", {f}))\n}}\n'
        )
    calls = " + ".join(f"F{f}(xs)" for f in range(GO_FUNCS))
    return (
        f'package p{n:02d}\n\nimport "fmt"\n\n' + "\n".join(funcs) + "\n"
        f"// Sum is what main prints\nfunc Sum(xs []int) int {{ return {calls} }}\n"
    )


def go_context(dest: Path, version: int) -> None:
    """v1: the module; v2: package p07 changed (it and main are compiled again)."""
    dest.mkdir(parents=True)
    (dest / "Dockerfile").write_text(GO_DOCKERFILE)
    (dest / "go.mod").write_text("module example.com/app\n\ngo 1.19\n")
    imports, sums = [], []
    for n in range(GO_PACKAGES):
        pkg = dest / f"p{n:02d}"
        pkg.mkdir()
        (pkg / "p.go").write_text(go_package(n, version if n == 7 else 1))
        imports.append(f'\t"example.com/app/p{n:02d}"')
        sums.append(f"p{n:02d}.Sum(xs)")
    (dest / "main.go").write_text(
        'package main\n\nimport (\n\t"fmt"\n' + "\n".join(imports) + "\n)\n\n"
        "func main() {\n\txs := []int{1, 2, 3, 4, 5, 6, 7, 8, 9}\n"
        f"\tfmt.Println({' + '.join(sums)})\n}}\n"
    )


def pip_context(dest: Path, version: int) -> None:
    """v1: the requirements; v2: one requirement added."""
    dest.mkdir(parents=True)
    (dest / "Dockerfile").write_text(PIP_DOCKERFILE)
    (dest / "requirements.txt").write_text("\n".join(PIP_V1 if version == 1 else PIP_V2) + "\n")


@dataclass(frozen=True)
class Fixture:
    name: str
    target: str  # the cache mount's target (and id)
    make: Callable[[Path, int], None]


FIXTURES = {
    "go": Fixture("go", "/root/.cache/go-build", go_context),
    "pip": Fixture("pip", "/root/.cache/pip", pip_context),
}

# ---------------------------------------------------------------------------- results

VARIANTS = {
    "kiln-mounts": "kiln, mounts exported",
    "kiln-no-mounts": "kiln, cache-mounts=false",
    "buildkit": "BuildKit, no persistence",
    "buildkit-dance": "BuildKit + cache dance",
    "rerun-mounts": "kiln rerun, export on",
    "rerun-no-mounts": "kiln rerun, mounts=false",
}
RERUN_PAIRS = 3  # per round: the rerun variants take about a second each


@dataclass
class Sample:
    seconds: float
    run_seconds: float | None = None  # the RUN step's own time
    phases: dict[str, float] = field(default_factory=dict)
    mount: dict[str, Any] = field(default_factory=dict)  # kiln's cache_mounts entry
    tar_in: int | None = None  # the dance: the "CI cache" tar injected and extracted
    tar_out: int | None = None
    run_cached: bool = False


# ---------------------------------------------------------------------------- helpers


@contextmanager
def fresh_dir(path: Path) -> Iterator[Path]:
    """A directory removed afterwards (a KILN_ROOT is GBs: one per fresh machine)."""
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def children_stopped() -> Iterator[None]:
    """On the way out of a failure, stop what this process started and still runs (a kiln
    whose wait was interrupted), by pid: SIGTERM, then SIGKILL after 30 s."""
    try:
        yield
    except BaseException:
        pids = []
        for task in Path("/proc/self/task").iterdir():
            with suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
            else:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        raise


def debian_base(registry: str, work: Path) -> str:
    """Debian 12 with Go and pip, built by kiln from ``scripts/debian-rootfs``; pushed."""
    ctx = work / "base"
    subprocess.run(
        [str(REPO / "scripts" / "debian-rootfs"), str(ctx / "rootfs")],
        check=True,
        capture_output=True,
    )
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        'CMD ["bash"]\n'
    )
    ref = f"{registry}/bench/debian:12"
    with fresh_dir(work / "base-root") as root:
        kiln("build", "-t", ref, "--push", ctx, root=root, metadata=False)
    shutil.rmtree(ctx, ignore_errors=True)  # the registry has it
    return ref


def kiln_sample(run: Run) -> Sample:
    """Seconds, the RUN step's, where the rest went (the steps before the RUN: the base's
    pull and unpack; after the steps: push and cache export) and the mount's report."""
    meta = run.metadata
    (step,) = [s for s in meta["steps"] if "--mount=type=cache" in s["step"]]
    steps = sum(s["seconds"] for s in meta["steps"])
    mount = dict((meta.get("cache_mounts") or [{}])[0])
    phases = {
        "pull+steps": steps - step["seconds"],
        "RUN": step["seconds"],
        "push+export+rest": run.seconds - steps,
        "mount import": mount.get("import_seconds", 0.0),
        "mount export": mount.get("export_seconds", 0.0),
    }
    return Sample(run.seconds, step["seconds"], phases, mount, run_cached=bool(step["cached"]))


class EngineFlake(Exception):
    """dockerd 20.10's BuildKit ran a step on an empty root filesystem (``exec: "/bin/sh":
    stat /bin/sh: no such file or directory``): seen once in a few dozen builds here, not
    reproduced alone. The variant is run again from a fresh engine, and the retry reported."""


def sh(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if "stat /bin/sh: no such file or directory" in text:
            raise EngineFlake(" ".join(cmd[:2] + cmd[-1:]))
        raise SystemExit(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    return proc.stdout + proc.stderr


_HEAD = re.compile(r"^#(\d+) \[[^\]]*\] (FROM|RUN --mount=type=cache)")
_DONE = re.compile(r"^#(\d+) DONE ([0-9.]+)s")


def docker_build(ctx: Path, env: dict[str, str], *args: str) -> dict[str, float]:
    """``docker build --progress plain``; the seconds of its FROM (the base's pull) and of
    its RUN --mount step, as BuildKit reports them (absent: cached or none)."""
    out = sh([DOCKER, "build", "--progress", "plain", "--network", "host", *args, str(ctx)], env)
    kinds = {m.group(1): m.group(2).split()[0] for line in out.splitlines()
             if (m := _HEAD.match(line))}  # fmt: skip
    steps: dict[str, float] = {}
    for line in out.splitlines():
        if (m := _DONE.match(line)) and m.group(1) in kinds:
            steps[kinds[m.group(1)]] = float(m.group(2))
    return steps


def fresh_engine(env: dict[str, str]) -> None:
    """A fresh machine for BuildKit: no containers, no build cache (mounts included), no
    images (the base included)."""
    containers = sh([DOCKER, "ps", "-aq"], env).split()
    if containers:
        sh([DOCKER, "rm", "-f", *containers], env)
    images = sorted(set(sh([DOCKER, "image", "ls", "-aq"], env).split()))
    if images:
        sh([DOCKER, "image", "rm", "-f", *images], env)
    # after the images: the build cache records that held their layers go too
    sh([DOCKER, "builder", "prune", "-af"], env)


# ---------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, work: Path, registry: str, base: str, fx: Fixture, rounds: int) -> None:
        self.work, self.base, self.fx, self.rounds = work / fx.name, base, fx, rounds
        self.work.mkdir()
        self.v1, self.v2 = self.work / "v1", self.work / "v2"
        fx.make(self.v1, 1)
        fx.make(self.v2, 2)
        self.repo = f"{registry}/bench/{fx.name}"
        self.rev = 0
        self.samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
        self.setup: dict[str, Any] = {}
        self.retries: list[str] = []  # EngineFlake
        self.steady = self.work / "steady-root"  # the machine that persists (rerun variants)
        self.ci_cache = self.work / "ci-cache"  # the dance's actions/cache, on the host

    def kiln_cache(self, mounts: bool, rnd: int | str) -> str:
        """A cache ref per round (each round's timed build imports and re-exports it)."""
        tag = rnd if isinstance(rnd, str) else f"r{rnd}"
        return f"{self.repo}-kiln{'' if mounts else '-nomounts'}:{tag}"

    @staticmethod
    def cache_to(ref: str, mounts: bool) -> str:
        return f"type=registry,ref={ref},mode=max" + ("" if mounts else ",cache-mounts=false")

    def kiln_build(
        self, ctx: Path, root: Path, image: str, *flags: str, rerun: bool = False
    ) -> Run:
        """kiln build + push; ``rerun``: a new REV, so that the RUN runs again."""
        if rerun:
            self.rev += 1
            flags = ("--build-arg", f"REV={self.rev}", *flags)
        return kiln("build", "--build-arg", f"BASE={self.base}", "-t", image, "--push", *flags,
                    ctx, root=root)  # fmt: skip

    def log(self, text: str) -> None:
        print(f"  [{self.fx.name}] {text}", flush=True)

    # ------------------------------------------------------------ setup (untimed)

    def setup_kiln(self) -> None:
        """v1 on the steady machine, exported with mounts and without to every round's ref
        and to the steady refs."""
        flags: list[str] = []
        for mounts in (True, False):
            for rnd in [*range(self.rounds), "steady"]:
                flags += ["--cache-to", self.cache_to(self.kiln_cache(mounts, rnd), mounts)]
        self.steady.mkdir()
        sample = kiln_sample(self.kiln_build(self.v1, self.steady, f"{self.repo}-steady:v1",
                                             *flags))  # fmt: skip
        self.setup["kiln_v1_seconds"] = round(sample.seconds, 2)
        self.setup["kiln_v1_run_seconds"] = sample.run_seconds
        self.setup["kiln_v1_mount_exported_bytes"] = sample.mount.get("exported_bytes", 0)
        self.log(f"kiln v1 (setup, {len(flags) // 2} exports): {sample.seconds:.1f} s, RUN "
                 f"{sample.run_seconds:.1f} s, mount exported "
                 f"{sample.mount.get('exported_bytes', 0):,} B")  # fmt: skip

    def setup_docker(self, env: dict[str, str]) -> None:
        """v1 with an inline cache, pushed for every round to both BuildKit repos; the
        mount extracted to the dance's "CI cache"."""
        fresh_engine(env)
        start = time.monotonic()
        tag = f"{self.repo}-seed:v1"
        steps = docker_build(self.v1, env, "--build-arg", f"BASE={self.base}",
                             "--build-arg", "BUILDKIT_INLINE_CACHE=1", "-t", tag)  # fmt: skip
        for rnd in range(self.rounds):
            for repo in ("buildkit", "dance"):
                ref = f"{self.repo}-{repo}:r{rnd}"
                sh([DOCKER, "tag", tag, ref], env)
                sh([DOCKER, "push", ref], env)
        self.ci_cache.mkdir()
        self.extract(env, self.ci_cache / "cache.tar")
        size = (self.ci_cache / "cache.tar").stat().st_size
        self.setup["buildkit_v1_run_seconds"] = steps.get("RUN")
        self.setup["dance_v1_tar_bytes"] = size
        self.log(f"BuildKit v1 (setup, {2 * self.rounds} pushes, extract): "
                 f"{time.monotonic() - start:.1f} s, RUN {steps.get('RUN', 0):.1f} s, "
                 f"mount tar {size:,} B")  # fmt: skip
        fresh_engine(env)

    # ------------------------------------------------------------ the dance's two halves

    def extract(self, env: dict[str, str], dest: Path) -> None:
        """The mount's contents out of the engine: a build whose RUN tars them (a nonce
        makes it run: ``--no-cache`` would give it a new, empty cache mount), then
        ``docker create`` + ``docker cp``."""
        ctx = self.work / "extract-ctx"
        if not ctx.exists():
            ctx.mkdir()
            (ctx / "Dockerfile").write_text(
                f"ARG BASE\nFROM ${{BASE}}\nARG NONCE\nRUN --mount=type=cache,target="
                f'{self.fx.target} echo "$NONCE" && tar -C {self.fx.target} -cf /cache.tar .\n'
            )
        tag = f"{self.repo}-extract:tmp"
        docker_build(ctx, env, "--build-arg", f"BASE={self.base}",
                     "--build-arg", f"NONCE={time.time_ns()}", "-t", tag)  # fmt: skip
        cid = sh([DOCKER, "create", tag], env).strip()
        sh([DOCKER, "cp", f"{cid}:/cache.tar", str(dest)], env)
        sh([DOCKER, "rm", cid], env)

    def inject_context(self, rnd: int) -> Path:
        """The dance's build context: its Dockerfile and the restored "CI cache" tar."""
        ctx = self.work / f"inject-ctx-{rnd}"
        ctx.mkdir()
        os.link(self.ci_cache / "cache.tar", ctx / "cache.tar")
        target = self.fx.target
        (ctx / "Dockerfile").write_text(
            "ARG BASE\nFROM ${BASE}\nCOPY cache.tar /cache.tar\n"
            f"RUN --mount=type=cache,target={target} tar -xf /cache.tar -C {target}\n"
        )
        return ctx

    # ------------------------------------------------------------ timed variants

    def kiln_fresh(self, rnd: int, mounts: bool) -> Sample:
        ref = self.kiln_cache(mounts, rnd)
        name = "kiln-mounts" if mounts else "kiln-no-mounts"
        with fresh_dir(self.work / f"{name}-r{rnd}") as root:
            run = self.kiln_build(self.v2, root, f"{self.repo}-{name}-img:r{rnd}", "--cache-from",
                                  ref, "--cache-to", self.cache_to(ref, mounts))  # fmt: skip
        sample = kiln_sample(run)
        if mounts and not sample.mount.get("imported_bytes"):
            raise SystemExit(f"{self.fx.name}: the fresh machine restored no mount: {sample}")
        return sample

    def kiln_rerun(self, mounts: bool) -> Sample:
        ref = self.kiln_cache(mounts, "steady")
        image = f"{self.repo}-steady:latest"
        run = self.kiln_build(self.v1, self.steady, image, "--cache-from", ref,
                              "--cache-to", self.cache_to(ref, mounts), rerun=True)  # fmt: skip
        sample = kiln_sample(run)
        if sample.run_cached:
            raise SystemExit(f"{self.fx.name}: the RUN did not rerun")
        return sample

    def buildkit(self, env: dict[str, str], rnd: int) -> Sample:
        fresh_engine(env)
        ref = f"{self.repo}-buildkit:r{rnd}"
        t0 = time.monotonic()
        steps = docker_build(self.v2, env, "--build-arg", f"BASE={self.base}",
                             "--build-arg", "BUILDKIT_INLINE_CACHE=1", "--cache-from", ref,
                             "-t", ref)  # fmt: skip
        t1 = time.monotonic()
        sh([DOCKER, "push", ref], env)
        t2 = time.monotonic()
        phases = {"build": t1 - t0, "FROM": steps.get("FROM", 0.0), "push": t2 - t1}
        return Sample(t2 - t0, steps.get("RUN"), phases)

    def dance(self, env: dict[str, str], rnd: int) -> Sample:
        fresh_engine(env)
        ref = f"{self.repo}-dance:r{rnd}"
        inject = self.inject_context(rnd)
        out = self.work / f"ci-cache-out-{rnd}"
        out.mkdir()
        t0 = time.monotonic()
        injected = docker_build(inject, env, "--build-arg", f"BASE={self.base}")
        t1 = time.monotonic()
        steps = docker_build(self.v2, env, "--build-arg", f"BASE={self.base}",
                             "--build-arg", "BUILDKIT_INLINE_CACHE=1", "--cache-from", ref,
                             "-t", ref)  # fmt: skip
        t2 = time.monotonic()
        sh([DOCKER, "push", ref], env)
        t3 = time.monotonic()
        self.extract(env, out / "cache.tar")
        t4 = time.monotonic()
        tar_in, tar_out = (inject / "cache.tar").stat().st_size, (out / "cache.tar").stat().st_size
        shutil.rmtree(inject)
        shutil.rmtree(out)
        phases = {"inject": t1 - t0, "FROM": injected.get("FROM", 0.0), "build": t2 - t1,
                  "push": t3 - t2, "extract": t4 - t3}  # fmt: skip
        return Sample(t4 - t0, steps.get("RUN"), phases, tar_in=tar_in, tar_out=tar_out)

    def reruns(self, rnd: int) -> list[tuple[str, Sample]]:
        """RERUN_PAIRS pairs, the order alternating."""
        out = []
        for pair in range(RERUN_PAIRS):
            for mounts in (True, False) if (rnd + pair) % 2 == 0 else (False, True):
                out.append(("rerun-mounts" if mounts else "rerun-no-mounts",
                            self.kiln_rerun(mounts)))  # fmt: skip
        return out

    def round(self, rnd: int, env: dict[str, str] | None) -> None:
        runs: list[Callable[[], list[tuple[str, Sample]]]] = [
            lambda: [("kiln-mounts", self.kiln_fresh(rnd, True))],
            lambda: [("kiln-no-mounts", self.kiln_fresh(rnd, False))],
            lambda: self.reruns(rnd),
        ]
        if env is not None:
            runs[2:2] = [lambda: [("buildkit", self.buildkit(env, rnd))],
                         lambda: [("buildkit-dance", self.dance(env, rnd))]]  # fmt: skip
        # the order rotates from round to round: no variant always runs first
        shift = rnd % len(runs)
        for run in runs[shift:] + runs[:shift]:
            for attempt in range(3):
                try:
                    results = run()
                    break
                except EngineFlake as exc:
                    self.retries.append(f"round {rnd + 1}: {exc}")
                    self.log(f"round {rnd + 1}: BuildKit ran a step on an empty rootfs "
                             f"({exc}); the variant again from a fresh engine")  # fmt: skip
                    if attempt == 2:
                        raise SystemExit("BuildKit failed three times in a row") from exc
            for variant, sample in results:
                self.samples[variant].append(sample)
                extra = f", RUN {sample.run_seconds:.1f} s" if sample.run_seconds else ""
                kind = sample.mount.get("export")
                extra += f", mount export {kind}" if kind else ""
                self.log(f"round {rnd + 1} {variant}: {sample.seconds:.2f} s{extra}")

    # ------------------------------------------------------------ report

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variants": {}}
        for variant, samples in self.samples.items():
            if not samples:
                continue
            secs = [s.seconds for s in samples]
            entry: dict[str, Any] = {
                "seconds": [round(s, 2) for s in secs],
                "median": round(median(secs), 2),
                "min": round(min(secs), 2),
                "max": round(max(secs), 2),
            }
            runs = [s.run_seconds for s in samples if s.run_seconds is not None]
            if runs:
                entry["run_step_seconds_median"] = round(median(runs), 2)
            phases = list(dict.fromkeys(k for s in samples for k in s.phases))
            if phases:
                entry["phases_median"] = {
                    k: round(median(s.phases.get(k, 0.0) for s in samples), 2) for k in phases
                }
            if any(s.mount for s in samples):
                for key in ("imported_bytes", "exported_bytes"):
                    entry[f"mount_{key}_median"] = median(s.mount.get(key, 0) for s in samples)
                entry["mount_export"] = sorted({s.mount.get("export", "-") for s in samples})
            for key in ("tar_in", "tar_out"):
                sizes = [getattr(s, key) for s in samples if getattr(s, key) is not None]
                if sizes:
                    entry[f"{key}_bytes_median"] = median(sizes)
            out["variants"][variant] = entry
        v = out["variants"]

        def ratio(a: str, b: str) -> float | None:
            return round(v[a]["median"] / v[b]["median"], 3) if a in v and b in v else None

        out["ratios"] = {
            "kiln-mounts / buildkit": ratio("kiln-mounts", "buildkit"),
            "kiln-mounts / buildkit-dance": ratio("kiln-mounts", "buildkit-dance"),
            "kiln-mounts / kiln-no-mounts": ratio("kiln-mounts", "kiln-no-mounts"),
        }
        rerun = ratio("rerun-mounts", "rerun-no-mounts")
        out["unchanged_mount_export_overhead_pct"] = (
            round((rerun - 1) * 100, 1) if rerun is not None else None
        )
        out["setup"] = self.setup
        out["buildkit_retries"] = self.retries
        return out

    def print_table(self, summary: dict[str, Any]) -> None:
        rounds = len(self.samples["kiln-mounts"])
        print(f"\n{self.fx.name}: a dependency changed, fresh machine; seconds per whole "
              f"command, {rounds} round{'s' * (rounds != 1)} (reruns: {RERUN_PAIRS} pairs a "
              "round, same KILN_ROOT)")  # fmt: skip
        print(f"{'variant':<26} {'median':>7} {'min':>7} {'max':>7} {'RUN s':>6} "
              f"{'mount in B':>11} {'mount out B':>11}  "
              "mount export; phases (median s)")  # fmt: skip
        for variant, label in VARIANTS.items():
            e = summary["variants"].get(variant)
            if e is None:
                continue
            run = e.get("run_step_seconds_median")
            run_s = f"{run:>6.1f}" if run is not None else f"{'-':>6}"
            size_in = e.get("mount_imported_bytes_median", e.get("tar_in_bytes_median"))
            size_out = e.get("mount_exported_bytes_median", e.get("tar_out_bytes_median"))
            sizes = " ".join(f"{n:>11,.0f}" if n is not None else f"{'-':>11}"
                             for n in (size_in, size_out))  # fmt: skip
            notes = "/".join(e.get("mount_export", [])) + ("; " if "mount_export" in e else "")
            notes += ", ".join(f"{k} {s:.2f}" for k, s in e.get("phases_median", {}).items())
            print(f"{label:<26} {e['median']:>7.2f} {e['min']:>7.2f} {e['max']:>7.2f} {run_s} "
                  f"{sizes}  {notes}")  # fmt: skip
        for name, value in summary["ratios"].items():
            if value is not None:
                print(f"  {name:<30} {value:.2f}")
        for retry in self.retries:
            print(f"  (BuildKit variant run again after an empty-rootfs failure: {retry})")
        pct = summary["unchanged_mount_export_overhead_pct"]
        if pct is not None:
            print(f"  export of an unchanged mount adds {pct:+.1f} % "
                  "(rerun medians: export on / cache-mounts=false)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median shown)")
    parser.add_argument("--fixtures", default="go,pip", help="comma-separated: go, pip")
    parser.add_argument("--skip-docker", action="store_true", help="kiln only")
    args = parser.parse_args()
    names = [n.strip() for n in args.fixtures.split(",") if n.strip()]
    if not names or any(n not in FIXTURES for n in names) or args.rounds < 1:
        parser.error(f"--fixtures: go and/or pip (got {args.fixtures!r}); --rounds >= 1")
    use_docker = not args.skip_docker
    if use_docker and not shutil.which("dockerd"):
        raise SystemExit("no dockerd: apt-get install docker.io, or --skip-docker")
    # SIGTERM unwinds like Ctrl-C: every temp dir and process is cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    start = time.monotonic()
    where = subprocess.run([sys.executable, "-c", "import kiln; print(kiln.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print(f"kiln: {Path(where).parent}; BuildKit: {DOCKER} (dockerd started here)", flush=True)
    with ExitStack() as stack:
        work = stack.enter_context(workdir("kiln-mounts-bench-"))
        registry = stack.enter_context(local_registry(work))
        env = stack.enter_context(dockerd(work / "docker")) if use_docker else None
        stack.enter_context(children_stopped())
        print("base image (scripts/debian-rootfs, kiln build --push) ... ", end="", flush=True)
        t = time.monotonic()
        base = debian_base(registry, work)
        print(f"{time.monotonic() - t:.0f} s", flush=True)
        benches = [Bench(work, registry, base, FIXTURES[n], args.rounds) for n in names]
        for bench in benches:
            bench.setup_kiln()
            if env is not None:
                bench.setup_docker(env)
        for rnd in range(args.rounds):
            for bench in benches:
                bench.round(rnd, env)
        summaries = {}
        for bench in benches:
            summaries[bench.fx.name] = bench.summary()
            bench.print_table(summaries[bench.fx.name])
        minutes = (time.monotonic() - start) / 60
        print(f"\n(total {minutes:.1f} min)")
        print(json.dumps({"rounds": args.rounds, "rerun_pairs_per_round": RERUN_PAIRS,
                          "docker": use_docker, "total_minutes": round(minutes, 1),
                          "fixtures": summaries}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
