"""kiln.timing: exclusive phase times, summed over threads."""

from __future__ import annotations

import threading
import time

from kiln import timing


def test_a_nested_phase_is_taken_out_of_the_outer_one() -> None:
    before = timing.totals()
    with timing.phase("diff"):
        time.sleep(0.02)
        with timing.phase("compress"):
            time.sleep(0.05)
    spent = timing.since(before)
    assert 0.045 <= spent["compress"] < 0.2
    assert 0.015 <= spent["diff"] < 0.045  # the outer phase without the inner one


def test_phases_in_threads_add_up_and_add_counts_once() -> None:
    before = timing.totals()

    def pull() -> None:
        with timing.phase("pull"):
            time.sleep(0.03)

    threads = [threading.Thread(target=pull) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timing.add("compress", 0.5)
    spent = timing.since(before)
    assert spent["pull"] >= 0.085  # three at once count three times
    assert spent["compress"] == 0.5
    assert spent["run"] == 0


def test_timed_times_each_call_and_keeps_its_result() -> None:
    @timing.timed("resolve")
    def resolve(x: int) -> int:
        time.sleep(0.01)
        return x * 2

    before = timing.totals()
    assert resolve(21) == 42
    assert timing.since(before)["resolve"] >= 0.009
