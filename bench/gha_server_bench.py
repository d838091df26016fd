#!/usr/bin/env python3
"""Benchmark ``kiln cache serve`` with the real ``@actions/cache`` npm client.

Saves and restores a directory of incompressible data (1 GiB by default) through the
server on loopback, in v1 (REST, chunked PATCH) and v2 (twirp + Azure blocks) mode, and
compares with a plain ``cp -r`` of the same data on the same disk. Reports:

- end-to-end MB/s of ``saveCache`` and ``restoreCache`` (these include the client's
  tar + zstd and untar work, which no server can speed up);
- the server's own transfer phase (upload: reservation to commit; download: the blob
  GET), taken from the server's request log;
- the server's peak resident memory (VmHWM) per run, for several entry sizes, to show
  it stays flat as entries grow.

Usage: ``python bench/gha_server_bench.py [--size 1GiB] [--small 128MiB] [--workdir DIR]``
(needs node and npm; runs ``npm ci`` in tests/integration/gha/node when needed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "integration" / "gha" / "node"
SECRET = b"kiln-bench-secret-0123456789abcdef"
MB = 1_000_000


def parse_size(text: str) -> int:
    sys.path.insert(0, str(REPO / "src"))
    from kiln.gha.server.settings import parse_size as parse

    return parse(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_data(root: Path, size: int) -> None:
    root.mkdir(parents=True)
    piece = 64 << 20
    n = 0
    left = size
    while left > 0:
        with open(root / f"part-{n:03d}.bin", "wb") as fh:
            want = min(piece, left)
            while want > 0:
                block = os.urandom(min(1 << 20, want))
                fh.write(block)
                want -= len(block)
        left -= min(piece, left)
        n += 1


def drop_page_cache() -> bool:
    """Drop clean caches so every phase reads from the disk (root only)."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(m.group(1)) if m else 0

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(m.group(1)) if m else 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(root: Path) -> Server:
    secret = root.parent / "secret"
    secret.write_bytes(SECRET)
    port = free_port()
    log = root.parent / f"server-{port}.log"
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "kiln.cli.main", "cache", "serve",
                "--listen", f"127.0.0.1:{port}", "--root", str(root),
                "--secret-file", str(secret), "--max-size", "50GB",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}_kiln/health", timeout=1):
                return Server(proc, url, log)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def token() -> str:
    sys.path.insert(0, str(REPO / "src"))
    from kiln.gha.scopes import READ, WRITE, Scope
    from kiln.gha.server.settings import Keys
    from kiln.gha.server.tokens import issue_token

    return issue_token(Keys.derive(SECRET).jwt, [Scope("refs/heads/main", READ | WRITE)])


def harness_env(server: Server, mode: str, tmp: Path) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp),
        "RUNNER_TEMP": str(tmp / "runner-temp"),
        "ACTIONS_RUNTIME_TOKEN": token(),
    }
    if mode == "v1":
        env.update(ACTIONS_CACHE_URL=server.url, GITHUB_SERVER_URL="https://forgejo.example")
    else:
        env.update(ACTIONS_RESULTS_URL=server.url, ACTIONS_CACHE_SERVICE_V2="1")
    (tmp / "runner-temp").mkdir(parents=True, exist_ok=True)
    return env


def run_harness(
    op: str, cwd: Path, key: str, env: dict[str, str]
) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    proc = subprocess.run(
        ["node", str(HARNESS / "harness.mjs"), op, "data", key],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.monotonic() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"harness {op} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, json.loads(lines[-1])


_LOG = re.compile(r"^(\S+ \S+) INFO kiln\.gha\.server(?:\.access)?: (.*)$")


def server_phases(log: Path) -> tuple[float, float]:
    """(upload seconds: reservation to commit, download seconds: the blob GET)."""
    reserved = committed = None
    download_ms = 0.0
    for line in log.read_text().splitlines():
        m = _LOG.match(line)
        if not m:
            continue
        stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        text = m.group(2)
        if text.startswith("reserved entry"):
            reserved = stamp
        elif text.startswith("committed entry"):
            committed = stamp
        elif '"GET /kiln/cache/' in text and " 200 " in text:
            download_ms = float(text.rsplit(" ", 1)[1].rstrip("ms"))
    upload = (committed - reserved) if reserved is not None and committed is not None else 0.0
    return upload, download_ms / 1000


def measure(mode: str, size: int, work: Path, data: Path, dropped: bool) -> dict[str, float]:
    run_dir = work / f"{mode}-{size}"
    run_dir.mkdir()
    server = start_server(run_dir / "root")
    idle_rss = server.rss_kib()
    cwd = run_dir / "job"
    cwd.mkdir()
    data.rename(cwd / "data")  # a real directory: tar would store a symlink as a symlink
    env = harness_env(server, mode, run_dir)
    if dropped:
        drop_page_cache()
    save_s, result = run_harness("save", cwd, f"bench-{mode}", env)
    assert isinstance(result.get("result"), int) and int(result["result"]) > 0, result
    (cwd / "data").rename(data)
    if dropped:
        drop_page_cache()
    restore_s, result = run_harness("restore", cwd, f"bench-{mode}", env)
    assert result.get("result") == f"bench-{mode}", result
    peak = server.peak_rss_kib()
    server.stop()
    upload_s, download_s = server_phases(server.log)
    restored = sum(p.stat().st_size for p in (cwd / "data").rglob("*") if p.is_file())
    assert restored == size, (restored, size)
    assert not (cwd / "data").is_symlink()
    shutil.rmtree(run_dir)
    return {
        "save_s": save_s,
        "restore_s": restore_s,
        "upload_s": upload_s,
        "download_s": download_s,
        "idle_rss_mib": idle_rss / 1024,
        "peak_rss_mib": peak / 1024,
    }


def timed_cp(data: Path, work: Path, dropped: bool) -> float:
    target = work / "cp-copy"
    if dropped:
        drop_page_cache()
    started = time.monotonic()
    subprocess.run(["cp", "-r", str(data), str(target)], check=True)
    subprocess.run(["sync"], check=True)
    elapsed = time.monotonic() - started
    shutil.rmtree(target)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="the directory to save (1GiB)")
    parser.add_argument("--small", default="128MiB", help="a smaller entry, for memory (128MiB)")
    parser.add_argument("--workdir", help="where to put data (default: a temp dir in /var/tmp)")
    parser.add_argument("--modes", default="v1,v2")
    parser.add_argument("--no-drop-caches", action="store_true")
    args = parser.parse_args()
    if shutil.which("node") is None:
        raise SystemExit("node is needed")
    if not (HARNESS / "node_modules" / "@actions" / "cache").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HARNESS, check=True)

    work = Path(tempfile.mkdtemp(prefix="kiln-gha-bench-", dir=args.workdir or "/var/tmp"))
    dropped = not args.no_drop_caches and os.geteuid() == 0
    sizes = [parse_size(args.small), parse_size(args.size)]
    rows = []
    try:
        for size in sizes:
            data = work / f"data-{size}"
            make_data(data, size)
            cp_s = timed_cp(data, work, dropped)
            for mode in args.modes.split(","):
                r = measure(mode, size, work, data, dropped)
                rows.append((size, mode, cp_s, r))
            shutil.rmtree(data)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    probe = subprocess.run(
        [sys.executable, "-c", "import httptools"], capture_output=True, env=dict(os.environ)
    )
    http = "httptools" if probe.returncode == 0 else "h11 (pure Python)"
    print(f"server HTTP parser: {http}; page cache dropped before each phase: {dropped}")
    header = (
        f"{'size':>9} {'mode':4} {'cp MB/s':>8} {'save MB/s':>9} {'restore MB/s':>12} "
        f"{'upload MB/s':>11} {'download MB/s':>13} {'save/cp':>7} {'restore/cp':>10} "
        f"{'idle RSS':>9} {'peak RSS':>9}"
    )
    print(header)
    for size, mode, cp_s, r in rows:
        mb = size / MB

        def rate(seconds: float, mb: float = mb) -> str:
            return f"{mb / seconds:.0f}" if seconds > 0 else "-"

        print(
            f"{size / 2**20:>6.0f}MiB {mode:4} {rate(cp_s):>8} {rate(r['save_s']):>9} "
            f"{rate(r['restore_s']):>12} {rate(r['upload_s']):>11} {rate(r['download_s']):>13} "
            f"{r['save_s'] / cp_s:>6.2f}x {r['restore_s'] / cp_s:>9.2f}x "
            f"{r['idle_rss_mib']:>6.0f}MiB {r['peak_rss_mib']:>6.0f}MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
