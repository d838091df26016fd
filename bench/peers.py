"""kiln, BuildKit and buildah side by side on three CI fixtures: cold, full hit, partial.

Every build pushes its image and exports a cache, on a fresh machine, against a loopback
registry:

- kiln: ``--cache-from/--cache-to type=registry,mode=max``, a new ``KILN_ROOT`` each time;
- BuildKit (dockerd's, driven by Debian's docker 20.10 client, as buildx users would with
  an inline cache): ``BUILDKIT_INLINE_CACHE=1 --cache-from <image>``, the engine emptied
  (containers, images, build cache) before each build;
- buildah: ``--layers --cache-from/--cache-to``, a new storage root each time.

Scenarios: *cold* (nothing cached; each round has its own repositories), *full* (nothing
changed), *partial* (the fixture's app changed; everything before it cached). Fixtures:

- ``synthetic``: busybox, a 64 MB incompressible file and 3,000 small files, ``RUN sleep
  3``, then ``COPY app.txt`` and ``RUN cat``;
- ``python``: a Debian minbase (debootstrap), ``apt-get install python3 python3-pip``,
  ``pip install`` of a Flask service's requirements from PyPI, ``COPY . /app`` (300 source
  files), ``RUN python3 -m compileall``; partial = one source file changed;
- ``bigbase``: a generated base of about 1 GB in 5 layers (large files and 50,000 small
  ones), ``COPY app/``, a ``RUN`` that reads a few files; partial = the app changed.

Prints per fixture the median seconds of each tool, kiln's ratio to each peer, kiln's
peak RSS, and kiln's own per-phase breakdown (``phases`` of ``--metadata-file``: seconds
summed over threads). Alternates the tools' order every round; before each build, syncs
and waits for the disks to be idle.

    sudo .venv/bin/python bench/peers.py [--fixtures synthetic,bigbase,python]
        [--repeat 3] [--skip-docker] [--skip-buildah] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_bench import DOCKER, dockerd
from cache_mounts_bench import fresh_engine
from common import REPO, busybox_base, kiln, local_registry, run_measured, workdir

from kiln.timing import PHASES

SCENARIOS = ("cold", "full", "partial")


# ---------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Fixture:
    name: str
    base: Callable[[str, Path], str]  # (registry, work) -> the pushed base image
    make: Callable[[Path], None]  # the context, version 1
    change: Callable[[Path, int], None]  # the partial scenario's edit (n > 1), or back (1)


SYNTHETIC = """\
ARG BASE
FROM ${BASE}
COPY big.bin /data/big.bin
COPY src/ /src/
RUN sleep 3 && find /src -type f | wc -l > /count
COPY app.txt /app/
RUN cat /app/app.txt /count
"""


def synthetic_context(ctx: Path) -> None:
    rng = random.Random(14)
    words = [f"w{n}" for n in range(500)]
    for i in range(3000):
        path = ctx / "src" / f"pkg{i % 40}" / f"mod{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(" ".join(rng.choice(words) for _ in range(rng.randint(50, 600))))
    (ctx / "big.bin").write_bytes(rng.randbytes(64 << 20))
    (ctx / "app.txt").write_text("app v1\n")
    (ctx / "Dockerfile").write_text(SYNTHETIC)


def change_app_txt(ctx: Path, n: int) -> None:
    (ctx / "app.txt").write_text(f"app v{n}\n")


PYTHON = """\
ARG BASE
FROM ${BASE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /app/requirements.txt
RUN pip install --break-system-packages --no-compile --progress-bar off \
    -r /app/requirements.txt
COPY . /app
RUN python3 -m compileall -q /app
"""

# a Flask service's pinned requirements (wheels for CPython 3.11 on PyPI)
REQUIREMENTS = [
    "flask==3.0.3", "werkzeug==3.0.3", "jinja2==3.1.4", "itsdangerous==2.2.0",
    "click==8.1.7", "markupsafe==2.1.5", "blinker==1.8.2", "requests==2.32.3",
    "urllib3==2.2.2", "idna==3.7", "certifi==2024.7.4", "charset-normalizer==3.3.2",
    "gunicorn==22.0.0", "packaging==24.1", "sqlalchemy==2.0.31", "greenlet==3.0.3",
    "typing-extensions==4.12.2", "pyyaml==6.0.1", "python-dateutil==2.9.0.post0",
    "six==1.16.0",
]  # fmt: skip


def python_context(ctx: Path) -> None:
    rng = random.Random(3)
    for i in range(300):
        path = ctx / "service" / f"area{i % 12}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "\n\n".join(
            f"def handler_{i}_{f}(request, n={rng.randint(1, 99)}):\n"
            f"    total = {rng.randint(0, 1000)}\n"
            "    for x in range(n):\n        total += x * 3 % 7\n    return {'ok': total}\n"
            for f in range(rng.randint(5, 25))
        )
        path.write_text(f'"""Module {i}."""\n\n' + body + "\n")
        (path.parent / "__init__.py").touch()
    (ctx / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    (ctx / "service" / "version.py").write_text("VERSION = 1\n")
    (ctx / "Dockerfile").write_text(PYTHON)


def change_python(ctx: Path, n: int) -> None:
    (ctx / "service" / "version.py").write_text(f"VERSION = {n}\n")


def minbase(registry: str, work: Path) -> str:
    """Debian 12 minbase with ca-certificates (and this machine's CA bundle), pushed."""
    ctx = work / "minbase"
    subprocess.run([str(REPO / "scripts" / "debian-rootfs"), str(ctx / "rootfs"),
                    "ca-certificates"], check=True, capture_output=True)  # fmt: skip
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        'CMD ["bash"]\n'
    )
    ref = f"{registry}/bench/minbase:12"
    kiln("build", "-t", ref, "--push", ctx, root=work / "minbase-root", metadata=False)
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.rmtree(work / "minbase-root", ignore_errors=True)
    return ref


BIGBASE_APP = """\
ARG BASE
FROM ${BASE}
COPY app/ /app/
RUN head -c 4096 /data/l2/big0.bin | wc -c > /app/read && cat /data/l1/d0/f0.txt \
    /data/l5/d3/f7.txt /app/version.txt >> /app/read
"""

# per layer: (small files, bytes each, large files, MiB each)
BIG_LAYERS = [(20_000, 2048, 0, 0), (0, 0, 4, 64), (10_000, 8192, 2, 64), (0, 0, 4, 64),
              (20_000, 1024, 3, 64)]  # fmt: skip


def big_base(registry: str, work: Path) -> str:
    """About 1 GB in 5 layers on busybox: large incompressible files, 50,000 small text
    files; built by kiln and pushed."""
    ctx = work / "bigbase"
    subprocess.run([str(REPO / "scripts" / "busybox-rootfs"), str(ctx / "rootfs")],
                   check=True, capture_output=True)  # fmt: skip
    rng = random.Random(1)
    lines = ["FROM scratch", "COPY rootfs/ /"]
    for n, (small, size, large, mib) in enumerate(BIG_LAYERS, start=1):
        layer = ctx / f"l{n}"
        for i in range(small):
            path = layer / f"d{i % 100}" / f"f{i // 100}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = f"layer {n} file {i} " * (size // 20)
            path.write_text(text[:size])
        for i in range(large):
            layer.mkdir(parents=True, exist_ok=True)
            (layer / f"big{i}.bin").write_bytes(rng.randbytes(mib << 20))
        lines.append(f"COPY l{n}/ /data/l{n}/")
    (ctx / "Dockerfile").write_text("\n".join([*lines, 'CMD ["sh"]', ""]))
    ref = f"{registry}/bench/bigbase:1"
    kiln("build", "-t", ref, "--push", ctx, root=work / "bigbase-root", metadata=False)
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.rmtree(work / "bigbase-root", ignore_errors=True)
    return ref


def bigbase_context(ctx: Path) -> None:
    for i in range(200):
        path = ctx / "app" / f"part{i % 10}" / f"f{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"app file {i}\n" * 40)
    (ctx / "app" / "version.txt").write_text("1\n")
    (ctx / "Dockerfile").write_text(BIGBASE_APP)


def change_bigbase(ctx: Path, n: int) -> None:
    (ctx / "app" / "version.txt").write_text(f"{n}\n")


FIXTURES = {
    "synthetic": Fixture("synthetic", busybox_base, synthetic_context, change_app_txt),
    "python": Fixture("python", minbase, python_context, change_python),
    "bigbase": Fixture("bigbase", big_base, bigbase_context, change_bigbase),
}


# ---------------------------------------------------------------------------- tools


def scenarios(fx: Fixture, ctx: Path) -> Iterator[str]:
    """The scenarios in order, the context changed for the partial one and back after."""
    try:
        for scenario in SCENARIOS:
            if scenario == "partial":
                fx.change(ctx, 2)
            yield scenario
    finally:
        fx.change(ctx, 1)


@dataclass
class Sample:
    seconds: float
    rss_mb: float | None = None
    phases: dict[str, float] | None = None


def run_kiln(fx: Fixture, ctx: Path, work: Path, registry: str, base: str,
             rnd: int, *, images: str = "") -> dict[str, Sample]:  # fmt: skip
    """kiln's three scenarios; *images* sets ``KILN_LAYER_IMAGES`` ("": its default)."""
    name = f"{fx.name}-kiln{images}{rnd}"
    image, cache = f"{registry}/bench/{name}:latest", f"{registry}/bench/{name}:buildcache"
    out: dict[str, Sample] = {}
    env = {"KILN_LAYER_IMAGES": images} if images else None
    for scenario in scenarios(fx, ctx):
        root = work / f"kiln-root-{name}-{scenario}"
        settle()
        try:
            run = kiln("build", "--build-arg", f"BASE={base}", "-t", image, "--push",
                       "--cache-from", cache, "--cache-to", f"type=registry,ref={cache},mode=max",
                       ctx, root=root, env=env)  # fmt: skip
        finally:
            shutil.rmtree(root, ignore_errors=True)
        out[scenario] = Sample(run.seconds, run.peak_rss_mb, run.metadata.get("phases", {}))
    return out


def settle() -> None:
    """Write back what earlier builds left dirty (a GB of layers, a deleted root) and wait
    until the disks are idle (the discards of a deleted root go on after ``sync``), so no
    tool is charged for the previous build's disk work."""
    os.sync()
    deadline = time.monotonic() + 60
    busy = _io_ticks()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _io_ticks()
        if now - busy < 25:  # ms of disk activity in the last half second
            return
        busy = now


def _io_ticks() -> int:
    """Milliseconds the block devices have spent doing I/O (``/proc/diskstats``)."""
    total = 0
    with open("/proc/diskstats") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 12 and not fields[2].startswith(("loop", "ram")):
                total += int(fields[12])
    return total


def timed(cmds: list[list[str]], env: dict[str, str]) -> Sample:
    """Run *cmds* one after another; wall seconds and the largest peak RSS among them."""
    settle()
    start, peak = time.monotonic(), 0.0
    for cmd in cmds:
        proc, rss = run_measured(cmd, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout.decode()[-3000:]}")
        peak = max(peak, rss)
    return Sample(time.monotonic() - start, peak)


def run_buildkit(fx: Fixture, ctx: Path, work: Path, registry: str, base: str,
                 rnd: int) -> dict[str, Sample]:  # fmt: skip
    image = f"{registry}/bench/{fx.name}-buildkit{rnd}:latest"
    out: dict[str, Sample] = {}
    with dockerd(work / f"docker-{fx.name}-{rnd}") as env:
        for scenario in scenarios(fx, ctx):
            fresh_engine(env)
            sample = timed([[DOCKER, "build", "--network", "host", "--build-arg", f"BASE={base}",
                             "--build-arg", "BUILDKIT_INLINE_CACHE=1", "--cache-from", image,
                             "-t", image, str(ctx)], [DOCKER, "push", image]], env)  # fmt: skip
            out[scenario] = Sample(sample.seconds)  # the work is in dockerd: no RSS of its own
    shutil.rmtree(work / f"docker-{fx.name}-{rnd}", ignore_errors=True)
    return out


def run_buildah(fx: Fixture, ctx: Path, work: Path, registry: str, base: str,
                rnd: int) -> dict[str, Sample]:  # fmt: skip
    image = f"{registry}/bench/{fx.name}-buildah{rnd}:latest"
    cache = f"{registry}/bench/{fx.name}-buildah{rnd}-cache"
    out: dict[str, Sample] = {}
    for scenario in scenarios(fx, ctx):
        store = work / f"buildah-{fx.name}-{rnd}-{scenario}"
        roots = ["--root", str(store / "root"), "--runroot", str(store / "run")]
        try:
            out[scenario] = timed(
                [["buildah", *roots, "bud", "--runtime", "runc", "--layers", "--network", "host",
                  "--tls-verify=false", "--build-arg", f"BASE={base}", "--cache-from", cache,
                  "--cache-to", cache, "-t", image, str(ctx)],
                 ["buildah", *roots, "push", "--tls-verify=false", image, f"docker://{image}"]],
                dict(os.environ),
            )  # fmt: skip
        finally:
            subprocess.run(["buildah", *roots, "rm", "--all"], capture_output=True)
            subprocess.run(["umount", "-R", str(store / "root" / "overlay")], capture_output=True)
            shutil.rmtree(store, ignore_errors=True)
    return out


def run_kiln_dirs(fx: Fixture, ctx: Path, work: Path, registry: str, base: str,
                  rnd: int) -> dict[str, Sample]:  # fmt: skip
    """kiln with every layer unpacked into a directory (no layer images)."""
    return run_kiln(fx, ctx, work, registry, base, rnd, images="0")


RUNNERS = {"kiln": run_kiln, "kiln-dirs": run_kiln_dirs, "buildkit": run_buildkit,
           "buildah": run_buildah}  # fmt: skip


# ---------------------------------------------------------------------------- report


def report(fx: Fixture, samples: dict[str, list[dict[str, Sample]]], rounds: int) -> None:
    tools = list(samples)
    peers = [t for t in tools if t != "kiln"]
    print(f"\n== {fx.name}: median of {rounds} rounds (seconds; ratio = kiln / peer)")
    head = f"{'scenario':<9} {'kiln':>7}"
    head += "".join(f" {t:>9} {'ratio':>6}" for t in peers) + f" {'kiln RSS MB':>12}"
    print(head)
    for scenario in SCENARIOS:
        ours = median(r[scenario].seconds for r in samples["kiln"])
        line = f"{scenario:<9} {ours:>7.2f}"
        for peer in peers:
            theirs = median(r[scenario].seconds for r in samples[peer])
            line += f" {theirs:>9.2f} {ours / theirs:>6.2f}"
        rss = median(r[scenario].rss_mb or 0 for r in samples["kiln"])
        print(line + f" {rss:>12.0f}")
    print("kiln phases (median seconds, summed over threads):")
    print(f"{'scenario':<9}" + "".join(f" {p[:8]:>8}" for p in PHASES))
    for scenario in SCENARIOS:
        values = [median((r[scenario].phases or {}).get(p, 0.0) for r in samples["kiln"])
                  for p in PHASES]  # fmt: skip
        print(f"{scenario:<9}" + "".join(f" {v:>8.2f}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixtures", default="synthetic,bigbase,python")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-docker", action="store_true")
    parser.add_argument("--skip-buildah", action="store_true")
    parser.add_argument(
        "--with-dirs",
        action="store_true",
        help="also run kiln with KILN_LAYER_IMAGES=0 (layers as directories)",
    )
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args()
    names = [n.strip() for n in args.fixtures.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        parser.error(f"unknown fixture {unknown[0]!r}; choose from {', '.join(FIXTURES)}")
    tools = ["kiln", *(["kiln-dirs"] if args.with_dirs else [])]
    if not args.skip_docker and shutil.which("dockerd"):
        tools.append("buildkit")
    if not args.skip_buildah and shutil.which("buildah"):
        tools.append("buildah")
    everything: dict[str, Any] = {}
    with workdir("kiln-peers-") as work, local_registry(work) as registry:
        for name in names:
            fx = FIXTURES[name]
            started = time.monotonic()
            base = fx.base(registry, work)
            ctx = work / f"ctx-{name}"
            fx.make(ctx)
            print(f"({name}: base and context ready in {time.monotonic() - started:.0f} s)",
                  flush=True)  # fmt: skip
            samples: dict[str, list[dict[str, Sample]]] = {t: [] for t in tools}
            try:
                for rnd in range(args.repeat):
                    order = tools[rnd % len(tools) :] + tools[: rnd % len(tools)]
                    for tool in order:
                        samples[tool].append(RUNNERS[tool](fx, ctx, work, registry, base, rnd))
            except SystemExit as exc:  # one fixture failing does not lose the others
                print(f"({name} failed: {exc})", flush=True)
                continue
            report(fx, samples, args.repeat)
            everything[name] = {t: [{s: vars(x) for s, x in r.items()} for r in runs]
                                for t, runs in samples.items()}  # fmt: skip
            shutil.rmtree(ctx, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
