"""Benchmark: multi-platform builds (linux/amd64 + linux/arm64, arm64 under QEMU).

Fixture: a two-platform busybox base (the host's busybox-static and busybox-static:arm64)
and a Dockerfile with the bench's stages plus a CPU-bound RUN (a shell counting loop) and a
``FROM --platform=$BUILDPLATFORM`` stage running the same loop for the cross-compilation
pattern. Scenarios, each a whole ``kiln build --push`` with ``--cache-to mode=max``:

  cold       host only vs both platforms, fresh machine, nothing cached
  full hit   host only vs both platforms, fresh machine, everything in the remote cache
  emulation  the CPU-bound RUN step's own seconds, native (amd64) vs emulated (arm64)
  cross      the $BUILDPLATFORM stage: runs once for both platforms (steps that ran)

BuildKit is not compared: Debian's docker 20.10 without buildx cannot build for another
platform. Needs root, qemu-user-static, and the arm64 architecture in dpkg (scripts/setup).

    sudo .venv/bin/python bench/platform_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, kiln, local_registry, workdir

LOOP = 'i=0; while [ "$i" -lt 150000 ]; do i=$((i+1)); done'
DOCKERFILE = f"""\
ARG BASE
FROM --platform=$BUILDPLATFORM ${{BASE}} AS tools
RUN {LOOP}; echo tool > /tool

FROM ${{BASE}} AS work
RUN {LOOP}; uname -m > /arch

FROM ${{BASE}}
COPY --from=tools /tool /tool
COPY --from=work /arch /arch
COPY app.txt /app.txt
RUN sleep 1 && cat /arch /app.txt > /report
"""
BOTH = "linux/amd64,linux/arm64"


def multiarch_base(registry: str, work: Path) -> str:
    subprocess.run([str(REPO / ".venv/bin/kiln"), "setup-qemu", "--platforms", "linux/arm64"],
                   check=True, capture_output=True)  # fmt: skip
    debs = work / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", "busybox-static:arm64"], cwd=debs, check=True,
                   capture_output=True)  # fmt: skip
    (deb,) = debs.glob("*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(debs / "x")], check=True)
    ctx = work / "base"
    rootfs = REPO / "scripts" / "busybox-rootfs"
    subprocess.run([str(rootfs), str(ctx / "rootfs-amd64")], check=True, capture_output=True)
    subprocess.run([str(rootfs), str(ctx / "rootfs-arm64"), str(debs / "x/bin/busybox")],
                   check=True, capture_output=True)  # fmt: skip
    (ctx / "Dockerfile").write_text("FROM scratch\nARG TARGETARCH\nCOPY rootfs-${TARGETARCH}/ /\n")
    ref = f"{registry}/bench/busybox:multi"
    kiln("build", "--platform", BOTH, "-t", ref, "--push", ctx, root=work / "base-root",
         metadata=False)  # fmt: skip
    return ref


def ratio(a: list[float], b: list[float]) -> float:
    return round(median(a) / median(b), 2)


def step_seconds(meta: dict, needle: str) -> dict[str, float]:
    return {s["step"].split(" ")[0]: s["seconds"] for s in meta["steps"] if needle in s["step"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with workdir("kiln-platform-bench-") as work, local_registry(work) as registry:
        base = multiarch_base(registry, work)
        ctx = work / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(DOCKERFILE)
        (ctx / "app.txt").write_text("v1\n")
        times: dict[str, list[float]] = {}
        emulated: list[float] = []
        native: list[float] = []
        cross_runs: list[int] = []
        for n in range(args.rounds):
            for label, platforms in (("host", "linux/amd64"), ("both", BOTH)):
                cache = f"{registry}/bench/cache:{label}-{n}"
                export = f"type=registry,ref={cache},mode=max"
                flags = ["--build-arg", f"BASE={base}", "--platform", platforms,
                         "-t", f"{registry}/bench/app:{label}-{n}", "--push",
                         "--cache-from", cache, "--cache-to", export]  # fmt: skip
                cold = kiln("build", *flags, ctx, root=work / f"{label}-{n}-cold")
                hit = kiln("build", *flags, ctx, root=work / f"{label}-{n}-hit")
                times.setdefault(f"{label} cold", []).append(cold.seconds)
                times.setdefault(f"{label} full hit", []).append(hit.seconds)
                assert all(s["cached"] for s in hit.metadata["steps"]), "not a full hit"
                if label == "both":
                    loop = step_seconds(cold.metadata, "work 2/2")
                    native.append(loop["linux/amd64"])
                    emulated.append(loop["linux/arm64"])
                    tools = [s for s in cold.metadata["steps"] if "tools 2/2" in s["step"]]
                    cross_runs.append(sum(1 for s in tools if s["cached"] is False))
        print(f"{'scenario':<16}{'median s':>10}{'min':>8}{'max':>8}")
        for name, values in times.items():
            print(f"{name:<16}{median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}")
        summary = {
            "median_seconds": {k: round(median(v), 3) for k, v in times.items()},
            "cold_ratio_both_vs_host": ratio(times["both cold"], times["host cold"]),
            "hit_ratio_both_vs_host": ratio(times["both full hit"], times["host full hit"]),
            "cpu_step_native_s": round(median(native), 3),
            "cpu_step_emulated_s": round(median(emulated), 3),
            "emulation_factor": ratio(emulated, native),
            "buildplatform_stage_runs_per_build": sorted(set(cross_runs)),
        }
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
