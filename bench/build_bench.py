"""Benchmark: a realistic multi-stage build, cold and then unchanged.

The context holds thousands of small files and tens of MB of incompressible data; one
RUN sleeps. Prints wall time and peak memory (largest process) of each build.

    sudo .venv/bin/python bench/build_bench.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import busybox_base, generate_context, kiln, local_registry, workdir


def main() -> None:
    with workdir("kiln-bench-") as work, local_registry(work) as registry:
        base = busybox_base(registry, work)
        ctx = generate_context(work / "ctx")
        root = work / "root"
        print(f"{'scenario':<26} {'seconds':>8} {'peak MB':>8} {'steps run':>10}")
        for name in ("cold", "unchanged rebuild"):
            run = kiln("build", "--build-arg", f"BASE={base}", ctx, root=root)
            steps = run.metadata["steps"]
            ran = sum(1 for s in steps if s["cached"] is False)
            print(f"{name:<26} {run.seconds:>8.2f} {run.peak_rss_mb:>8.1f} {ran:>5}/{len(steps)}")


if __name__ == "__main__":
    main()
