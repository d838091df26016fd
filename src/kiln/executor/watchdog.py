"""A process that outlives kiln only to kill kiln's containers.

``runc run`` does not take its container down when it is killed itself: the container's
init is re-parented and goes on running. So each kiln process that runs a step starts
one watchdog (in a session of its own, so a signal to kiln's process group spares it)
and tells it, through a pipe, which containers are running. When the pipe closes —
kiln exited, or was killed, even with SIGKILL — the watchdog kills and deletes the
containers still listed, then exits. A normal exit lists none.

Run as a script (``python -I -S watchdog.py RUNTIME STATE_ROOT``), it imports only the
standard library: nothing of kiln is loaded in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

RETRIES = 3  # a container still being created when kiln died may appear a moment later
RETRY_DELAY = 0.3


class Watchdog:
    """kiln's side: the watchdog process and the pipe that feeds it."""

    def __init__(self, runtime: str, state_root: Path) -> None:
        read, self._pipe = os.pipe()
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, runtime, str(state_root)],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except OSError:
            os.close(self._pipe)
            self._pipe = -1
        finally:
            os.close(read)

    def watch(self, container_id: str) -> None:
        self._send(f"+{container_id}\n")

    def release(self, container_id: str) -> None:
        self._send(f"-{container_id}\n")

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe (the watchdog then does its work and exits) and wait for it."""
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        if self._proc is not None:
            self._proc.wait(timeout)

    def _send(self, line: str) -> None:
        if self._pipe >= 0:
            try:
                os.write(self._pipe, line.encode())  # < PIPE_BUF: one atomic write
            except OSError:
                os.close(self._pipe)  # the watchdog is gone; steps run on without it
                self._pipe = -1


def watch(lines: Iterable[bytes], runtime: str, state_root: str) -> None:
    """Follow *lines* (``+ID`` / ``-ID``) to their end, then kill and delete every
    container still listed that the runtime still knows."""
    live: dict[str, None] = {}
    for raw in lines:
        line = raw.decode(errors="replace").strip()
        if line[:1] == "+":
            live[line[1:]] = None
        elif line[:1] == "-":
            live.pop(line[1:], None)
    if not live:
        return
    root = ["--root", state_root]
    for attempt in range(RETRIES):
        if attempt:
            time.sleep(RETRY_DELAY)
        for cid in live:
            if (Path(state_root) / cid).exists():
                subprocess.run([runtime, *root, "kill", cid, "KILL"], capture_output=True)
                subprocess.run([runtime, *root, "delete", "--force", cid], capture_output=True)
                if subprocess.run([runtime, *root, "state", cid], capture_output=True).returncode:
                    # a creation cut short: a directory the runtime does not know
                    shutil.rmtree(Path(state_root) / cid, ignore_errors=True)


if __name__ == "__main__":
    watch(sys.stdin.buffer, sys.argv[1], sys.argv[2])
