"""Benchmark: ``type=gha`` against ``kiln cache serve``, side by side with ``type=registry``.

The remote-cache scenarios (cold, fresh full hit, fresh partial), each pushing the image
and exporting a ``mode=max`` cache, once with the registry cache and once with the gha
cache (v2 protocol, as GitHub runners use it now; ``--v1`` for the REST protocol).
Prints seconds and bytes per scenario and gha's time as a ratio of the registry's.

    sudo .venv/bin/python bench/gha_cache_bench.py [--repeat 3] [--v1]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cache_bench import SCENARIOS, run_kiln
from common import busybox_base, generate_context, local_registry, workdir


@contextmanager
def cache_server(work: Path) -> Iterator[tuple[str, str]]:
    """``kiln cache serve`` on a free loopback port; yields (url, read-write token)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = work / "gha-secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    kiln = [sys.executable, "-m", "kiln.cli.main", "cache"]
    proc = subprocess.Popen(
        [*kiln, "serve", "--listen", f"127.0.0.1:{port}", "--root", str(work / "gha"),
         "--secret-file", str(secret)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}_kiln/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        token = subprocess.run(
            [*kiln, "token", "--secret-file", str(secret), "--scope", "refs/heads/main",
             "--write"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        yield url, token
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--v1", action="store_true", help="the v1 REST protocol")
    args = parser.parse_args()
    with workdir("kiln-gha-bench-") as work, local_registry(work) as registry:
        base = busybox_base(registry, work)
        ctx = generate_context(work / "ctx")
        with cache_server(work) as (url, token):
            if args.v1:
                env = {"ACTIONS_CACHE_URL": url, "ACTIONS_CACHE_SERVICE_V2": ""}
            else:
                env = {"ACTIONS_RESULTS_URL": url, "ACTIONS_CACHE_SERVICE_V2": "true"}
            env["ACTIONS_RUNTIME_TOKEN"] = token
            results: dict[str, list[dict[str, tuple[float, int, int, int]]]] = {
                "registry": [],
                "gha": [],
            }
            for rep in range(args.repeat):
                results["registry"].append(run_kiln(ctx, work, registry, base, rep))
                gha = ["--cache-from", f"type=gha,scope=bench{rep}",
                       "--cache-to", f"type=gha,mode=max,scope=bench{rep}"]  # fmt: skip
                results["gha"].append(run_kiln(ctx, work, registry, base, 100 + rep, gha, env))
        protocol = "v1" if args.v1 else "v2"
        print(f"median of {args.repeat} runs; gha over kiln cache serve ({protocol})")
        print(
            f"{'scenario':<14} {'registry s':>10} {'gha s':>7} {'gha/registry':>13} "
            f"{'registry pulled':>16} {'gha pulled':>11} {'registry pushed':>16} "
            f"{'gha pushed':>11}"
        )
        for scenario in SCENARIOS:
            reg = [median(r[scenario][i] for r in results["registry"]) for i in range(4)]
            gha = [median(r[scenario][i] for r in results["gha"]) for i in range(4)]
            print(
                f"{scenario:<14} {reg[0]:>10.2f} {gha[0]:>7.2f} {gha[0] / reg[0]:>13.2f} "
                f"{reg[2]:>16,.0f} {gha[2]:>11,.0f} {reg[3]:>16,.0f} {gha[3]:>11,.0f}"
            )


if __name__ == "__main__":
    main()
