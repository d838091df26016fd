"""What explaining misses costs: build time with and without key descriptions, and bytes.

kiln with key descriptions (this checkout) against kiln without them (the commit before
they came, ``--without``, run from a git worktree), side by side in one run, alternating
in every round, on the bench fixture (3,000 small files, 40 MB incompressible, a
multi-stage Dockerfile with RUN sleeps): a cold build exporting a ``mode=max`` registry
cache, a fresh-machine full hit, and a fresh-machine partial rebuild (``app.txt``
changed) — build + push + cache export, loopback registry, median of ``--repeat`` rounds.
It also reports the cache config's size with and without descriptions (the bytes they
add to every exported cache).

    .venv/bin/python bench/explain_bench.py   (as root) [--repeat 5] [--without f04b503^]
        [--with COMMIT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import urllib.request

from common import REPO, busybox_base, generate_context, kiln, local_registry, workdir

FIRST_DESCRIBED = "f04b503"  # the commit that added key descriptions

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip


def config_size(registry: str, repo: str, tag: str) -> int:
    """The size of the cache config blob the cache manifest *repo:tag* names."""
    request = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": MANIFEST_TYPES})  # fmt: skip
    with urllib.request.urlopen(request) as response:
        manifest = json.loads(response.read())
    if "manifests" in manifest:  # image-manifest=false: the config is an index entry
        (config,) = [m for m in manifest["manifests"]
                     if m["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"]  # fmt: skip
        return int(config["size"])
    return int(manifest["config"]["size"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--without",
        default=f"{FIRST_DESCRIBED}^",
        help="the kiln commit to compare with (before descriptions)",
    )
    parser.add_argument("--with", dest="with_", default=None,
                        help="the commit with descriptions (default: this checkout)")  # fmt: skip
    args = parser.parse_args()
    with workdir("kiln-explain-bench-") as work, local_registry(work) as registry:
        trees = {"without": args.without, "with": args.with_}
        for name, commit in trees.items():
            if commit is not None:
                add = ["git", "-C", str(REPO), "worktree", "add", "--detach", str(work / name)]
                subprocess.run([*add, commit], check=True, capture_output=True)
        try:
            versions = {name: {"PYTHONPATH": str(work / name / "src")} if commit else {}
                        for name, commit in trees.items()}  # fmt: skip
            base = busybox_base(registry, work)
            ctx = generate_context(work / "ctx")
            times: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
            sizes: dict[str, int] = {}
            for rep in range(args.repeat):
                (ctx / "app.txt").write_text("app v1\n")
                order = list(versions) if rep % 2 == 0 else list(reversed(versions))
                for name in order:
                    env = versions[name]
                    repo = f"bench/explain-{name}-{rep}"
                    ref = f"{registry}/{repo}:cache"
                    flags = ["--build-arg", f"BASE={base}", "--cache-from", ref,
                             "--cache-to", f"type=registry,ref={ref},mode=max",
                             "-t", f"{registry}/{repo}:img", "--push"]  # fmt: skip
                    runs = times[name]
                    root = work / f"{name}-{rep}"
                    cold = kiln("build", *flags, ctx, root=root / "cold", env=env)
                    runs.setdefault("cold", []).append(cold.seconds)
                    sizes[name] = config_size(registry, repo, "cache")
                    full = kiln("build", *flags, ctx, root=root / "full", env=env)
                    runs.setdefault("full hit", []).append(full.seconds)
                    (ctx / "app.txt").write_text(f"app {name} {rep}\n")
                    partial = kiln("build", *flags, ctx, root=root / "partial", env=env)
                    runs.setdefault("partial", []).append(partial.seconds)
                    (ctx / "app.txt").write_text("app v1\n")
        finally:
            for name, commit in trees.items():
                if commit is not None:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                    str(work / name)], capture_output=True)  # fmt: skip
    print(
        f"median of {args.repeat} rounds; with = kiln {args.with_ or 'this checkout'}, "
        f"without = kiln {args.without}"
    )
    print(f"{'scenario':<10} {'with':>8} {'without':>8} {'ratio':>7}")
    for scenario in times["with"]:
        a = statistics.median(times["with"][scenario])
        b = statistics.median(times["without"][scenario])
        print(f"{scenario:<10} {a:>7.2f}s {b:>7.2f}s {a / b:>7.3f}")
    added = sizes["with"] - sizes["without"]
    print(f"cache config: {sizes['with']} bytes with descriptions, {sizes['without']} without "
          f"(+{added} bytes)")  # fmt: skip


if __name__ == "__main__":
    main()
