"""The ``--progress tty`` view: a rich live display of running steps (the only module that
imports rich, so other progress modes never load it)."""

from __future__ import annotations

import threading
import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from kiln.cache.records import CacheSource
from kiln.frontend.base import Step
from kiln.solver.types import MissReason


class RichProgress:
    """A live per-step view: running steps with their last output line and a timer."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._lock = threading.Lock()
        self._rows: dict[
            tuple[str, int, int], list[object]
        ] = {}  # key -> [step, state, t0, secs, last, why]
        self._messages: list[str] = []
        self.live = Live(self._render(), console=self.console, refresh_per_second=8,
                         transient=False, get_renderable=self._render)  # fmt: skip

    def __enter__(self) -> RichProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def _render(self) -> Group:
        lines: list[Text] = []
        now = time.monotonic()
        with self._lock:
            rows = list(self._rows.values())
            messages = list(self._messages)
        for step, state, t0, secs, last, why in rows:
            assert isinstance(step, Step)
            head = f"[{step.stage_name} {step.number}/{step.total}] {step.text}"
            if state == "running":
                assert isinstance(t0, float)
                text = Text(f" => {head}", style="bold")
                text.append(f"  {now - t0:.1f}s", style="cyan")
                lines.append(text)
                if last:
                    lines.append(Text(f"    {last}"[:160], style="dim"))
            elif state == "cached":
                lines.append(Text(f" => CACHED {head}", style="blue"))
            elif state == "failed":
                lines.append(Text(f" => ERROR {head}", style="red"))
            else:
                lines.append(Text(f" => {head}  {secs:.1f}s", style="green"))
            if why and state != "cached":
                lines.append(Text(f"    miss: {why}"[:160], style="yellow"))
        lines += [Text(m) for m in messages]
        return Group(*lines)

    def _set(self, step: Step, **values: object) -> None:
        with self._lock:
            row = self._rows.setdefault(
                (step.stage_name, step.stage, step.number), [step, "running", 0.0, 0.0, "", ""]
            )
            for i, name in enumerate(("state", "t0", "secs", "last", "why"), start=1):
                if name in values:
                    row[i] = values[name]

    def step_started(self, step: Step) -> None:
        self._set(step, state="running", t0=time.monotonic())

    def step_cached(self, step: Step, source: CacheSource) -> None:
        self._set(step, state="cached")

    def step_missed(self, step: Step, reason: MissReason) -> None:
        self._set(step, why=reason.detail)

    def step_log(self, step: Step, line: str) -> None:
        self._set(step, last=line)

    def step_done(self, step: Step, seconds: float) -> None:
        self._set(step, state="done", secs=seconds)

    def step_failed(self, step: Step, seconds: float, error: str) -> None:
        self._set(step, state="failed", secs=seconds)

    def message(self, text: str) -> None:
        with self._lock:
            self._messages.append(text)
