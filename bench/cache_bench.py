"""Benchmark: remote build cache on fresh machines, kiln against BuildKit and buildah.

Scenarios (each pushes the image and exports a cache):
  cold           nothing cached anywhere
  fresh full     a fresh machine, nothing changed (everything from the remote cache)
  fresh partial  a fresh machine, the last COPY source changed

kiln: ``--cache-to type=registry,mode=max``. BuildKit (Docker's built-in, dockerd started
here): ``--build-arg BUILDKIT_INLINE_CACHE=1 --cache-from <image>``, a fresh machine being
a pruned builder and image store. buildah: ``--layers --cache-from/--cache-to``, a fresh
machine being an empty storage root. Prints seconds, bytes pulled and pushed (kiln) and
kiln's time as a ratio of each peer's.

    sudo .venv/bin/python bench/cache_bench.py [--skip-docker] [--skip-buildah]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import busybox_base, generate_context, kiln, local_registry, workdir

SCENARIOS = ("cold", "fresh full", "fresh partial")
# Debian's docker.io client: it drives dockerd's built-in BuildKit without buildx
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def change_last(ctx: Path, n: int) -> None:
    (ctx / "app.txt").write_text(f"app v{n}\n")


# ---------------------------------------------------------------------------- kiln


def run_kiln(
    ctx: Path,
    work: Path,
    registry: str,
    base: str,
    rep: int,
    cache_flags: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, tuple[float, int, int, int]]:
    """The three scenarios; by default with a ``mode=max`` registry cache. Returns
    seconds, layer bytes pulled and all bytes pulled (manifests, configs, indexes, layers;
    image and cache) and bytes pushed per scenario."""
    image = f"{registry}/bench/kiln{rep}:latest"
    cache = f"{registry}/bench/kiln{rep}:buildcache"
    flags = cache_flags or ["--cache-from", cache,
                            "--cache-to", f"type=registry,ref={cache},mode=max"]  # fmt: skip
    out: dict[str, tuple[float, int, int, int]] = {}
    for n, scenario in enumerate(SCENARIOS):
        if scenario == "fresh partial":
            change_last(ctx, 2)
        run = kiln(
            "build", "--build-arg", f"BASE={base}", "-t", image, "--push", *flags,
            ctx, root=work / f"kiln-root-{rep}-{n}-{len(flags)}", env=env,
        )  # fmt: skip
        meta = run.metadata
        out[scenario] = (
            run.seconds,
            meta["layer_bytes_pulled"],
            meta["bytes_pulled"],
            meta["bytes_pushed"],
        )
    change_last(ctx, 1)
    return out


# ---------------------------------------------------------------------------- BuildKit


@contextmanager
def dockerd(work: Path) -> Iterator[dict[str, str]]:
    sock = work / "docker.sock"
    proc = subprocess.Popen(
        ["dockerd", "--host", f"unix://{sock}", "--data-root", str(work / "docker-data"),
         "--exec-root", str(work / "docker-exec"), "--pidfile", str(work / "docker.pid"),
         "--iptables=false", "--bridge=none"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1"}
    try:
        for _ in range(100):
            if subprocess.run([DOCKER, "info"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("dockerd did not start")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def timed(cmds: list[list[str]], env: dict[str, str], cwd: Path | None = None) -> float:
    start = time.monotonic()
    for cmd in cmds:
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stderr + proc.stdout)[-3000:]}")
    return time.monotonic() - start


def run_buildkit(ctx: Path, work: Path, registry: str, base: str, rep: int) -> dict[str, float]:
    image = f"{registry}/bench/buildkit{rep}:latest"
    out: dict[str, float] = {}
    with dockerd(work / f"docker-{rep}") as env:
        for scenario in SCENARIOS:
            if scenario == "fresh partial":
                change_last(ctx, 2)
            # a fresh machine: no build cache, no images
            timed([[DOCKER, "builder", "prune", "-af"], [DOCKER, "image", "prune", "-af"]], env)
            out[scenario] = timed(
                [
                    [DOCKER, "build", "--network", "host", "--build-arg", f"BASE={base}",
                     "--build-arg", "BUILDKIT_INLINE_CACHE=1", "--cache-from", image,
                     "-t", image, str(ctx)],
                    [DOCKER, "push", image],
                ],
                env,
            )  # fmt: skip
        change_last(ctx, 1)
    return out


# ---------------------------------------------------------------------------- buildah


def run_buildah(ctx: Path, work: Path, registry: str, base: str, rep: int) -> dict[str, float]:
    image = f"{registry}/bench/buildah{rep}:latest"
    cache = f"{registry}/bench/buildah{rep}-cache"
    out: dict[str, float] = {}
    for n, scenario in enumerate(SCENARIOS):
        if scenario == "fresh partial":
            change_last(ctx, 2)
        store = [
            "--root", str(work / f"buildah-{rep}-{n}"),
            "--runroot", str(work / f"buildah-run-{rep}-{n}"),
            "--runtime", "runc",  # crun refuses hybrid cgroups on these machines
        ]  # fmt: skip
        out[scenario] = timed(
            [
                ["buildah", *store[:4], "bud", *store[4:], "--layers", "--tls-verify=false",
                 "--build-arg", f"BASE={base}", "--cache-from", cache, "--cache-to", cache,
                 "-t", image, str(ctx)],
                ["buildah", *store[:4], "push", "--tls-verify=false", image, f"docker://{image}"],
            ],
            dict(os.environ),
        )  # fmt: skip
    change_last(ctx, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-docker", action="store_true")
    parser.add_argument("--skip-buildah", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (median shown)")
    args = parser.parse_args()
    with workdir("kiln-cache-bench-") as work, local_registry(work) as registry:
        base = busybox_base(registry, work)
        ctx = generate_context(work / "ctx")
        runners: dict[str, Callable[..., dict[str, float]]] = {}
        if not args.skip_docker and shutil.which("dockerd"):
            runners["buildkit"] = run_buildkit
        if not args.skip_buildah and shutil.which("buildah"):
            runners["buildah"] = run_buildah
        kiln_runs = [run_kiln(ctx, work, registry, base, rep) for rep in range(args.repeat)]
        peers: dict[str, list[dict[str, float]]] = {}
        for name, runner in runners.items():
            try:
                peers[name] = [runner(ctx, work, registry, base, r) for r in range(args.repeat)]
            except SystemExit as exc:
                print(f"({name} skipped: {str(exc).splitlines()[0]})")
        print(f"median of {args.repeat} runs per tool and scenario")
        head = f"{'scenario':<14} {'kiln s':>7} {'layers pulled':>14} {'pushed':>11}"
        for name in peers:
            head += f" {name + ' s':>11} {'kiln/' + name:>13}"
        print(head)
        for scenario in SCENARIOS:
            seconds = median(r[scenario][0] for r in kiln_runs)
            pulled = median(r[scenario][1] for r in kiln_runs)
            pushed = median(r[scenario][3] for r in kiln_runs)
            line = f"{scenario:<14} {seconds:>7.2f} {pulled:>14,.0f} {pushed:>11,.0f}"
            for runs in peers.values():
                theirs = median(r[scenario] for r in runs)
                line += f" {theirs:>11.2f} {seconds / theirs:>13.2f}"
            print(line)


if __name__ == "__main__":
    main()
