"""Progress display: a rich live view on a terminal (:mod:`kiln.cli.live`), buildx-like
plain lines otherwise.

``--progress plain`` prints ``#N [stage n/total] INSTRUCTION``, ``#N MISS <why>`` for a
step that runs, output lines, ``#N CACHED`` or ``#N DONE 1.2s``; ``rawjson`` prints one
JSON object per event; ``quiet`` nothing.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

from kiln.cache.records import CacheSource
from kiln.frontend.base import Step
from kiln.solver.types import MissReason, Progress


class _Numbering:
    def __init__(self) -> None:
        self._ids: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    def of(self, step: Step) -> int:
        with self._lock:
            return self._ids.setdefault(
                (step.stage_name, step.stage, step.number), len(self._ids) + 1
            )


class PlainProgress:
    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.ids = _Numbering()
        self.start = time.monotonic()
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def step_started(self, step: Step) -> None:
        self._print(
            f"#{self.ids.of(step)} [{step.stage_name} {step.number}/{step.total}] {step.text}"
        )

    def step_cached(self, step: Step, source: CacheSource) -> None:
        n = self.ids.of(step)
        self._print(f"#{n} [{step.stage_name} {step.number}/{step.total}] {step.text}")
        self._print(f"#{n} CACHED" + (" (remote)" if source == "remote" else ""))

    def step_missed(self, step: Step, reason: MissReason) -> None:
        self._print(f"#{self.ids.of(step)} MISS {reason.detail}")

    def step_log(self, step: Step, line: str) -> None:
        self._print(f"#{self.ids.of(step)} {time.monotonic() - self.start:.3f} {line}")

    def step_done(self, step: Step, seconds: float) -> None:
        self._print(f"#{self.ids.of(step)} DONE {seconds:.1f}s")

    def step_failed(self, step: Step, seconds: float, error: str) -> None:
        self._print(f"#{self.ids.of(step)} ERROR {error.splitlines()[0]}")

    def message(self, text: str) -> None:
        self._print(text)


class JsonProgress(PlainProgress):
    def _event(self, kind: str, step: Step | None = None, **extra: object) -> None:
        event: dict[str, object] = {"event": kind, "time": round(time.monotonic() - self.start, 3)}
        if step is not None:
            event["step"] = step.label
        event.update(extra)
        self._print(json.dumps(event))

    def step_started(self, step: Step) -> None:
        self._event("started", step)

    def step_cached(self, step: Step, source: CacheSource) -> None:
        self._event("cached", step, source=source)

    def step_missed(self, step: Step, reason: MissReason) -> None:
        self._event("missed", step, reason=reason.to_json())

    def step_log(self, step: Step, line: str) -> None:
        self._event("log", step, line=line)

    def step_done(self, step: Step, seconds: float) -> None:
        self._event("done", step, seconds=round(seconds, 3))

    def step_failed(self, step: Step, seconds: float, error: str) -> None:
        self._event("error", step, seconds=round(seconds, 3), error=error)

    def message(self, text: str) -> None:
        self._event("message", text=text)


class QuietProgress:
    def step_started(self, step: Step) -> None:
        pass

    def step_cached(self, step: Step, source: CacheSource) -> None:
        pass

    def step_missed(self, step: Step, reason: MissReason) -> None:
        pass

    def step_log(self, step: Step, line: str) -> None:
        pass

    def step_done(self, step: Step, seconds: float) -> None:
        pass

    def step_failed(self, step: Step, seconds: float, error: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def make_progress(mode: str) -> Progress:
    if mode == "auto":
        mode = "tty" if sys.stderr.isatty() else "plain"
    if mode == "tty":
        from kiln.cli.live import RichProgress  # rich is loaded only for a terminal

        return RichProgress()
    if mode == "rawjson":
        return JsonProgress()
    if mode == "quiet":
        return QuietProgress()
    return PlainProgress()
