"""The node's timer wheel: wake-ups in deadline order, earlier reschedules, cancels, no spinning."""

from __future__ import annotations

import asyncio

from harness import wait_until

from node.timers import RESOLUTION, TimerWheel


class Sleeper:
    def __init__(self, wheel: TimerWheel, name: str, woken: list[tuple[str, float]]) -> None:
        self.timer_slot = 0
        self.name, self.wheel, self.woken = name, wheel, woken
        self.again: float | None = None  # reschedule to this loop time from on_timer

    def on_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self.woken.append((self.name, loop.time()))
        if self.again is not None:
            when, self.again = self.again, None
            self.wheel.schedule(self, when)


async def test_wake_ups_come_in_order_no_earlier_than_their_deadline() -> None:
    loop = asyncio.get_running_loop()
    wheel, woken = TimerWheel(), []
    now = loop.time()
    deadlines = {"c": now + 0.30, "a": now + 0.05, "b": now + 0.12}
    for name, when in deadlines.items():
        wheel.schedule(Sleeper(wheel, name, woken), when)
    await wait_until(lambda: len(woken) == 3, timeout=5, what="three wake-ups")
    assert [name for name, _ in woken] == ["a", "b", "c"]
    for name, at in woken:
        assert deadlines[name] - 1e-6 <= at, (name, at)


async def test_an_earlier_deadline_wins_and_cancel_skips_the_entry() -> None:
    loop = asyncio.get_running_loop()
    wheel, woken = TimerWheel(), []
    moved, cancelled = Sleeper(wheel, "moved", woken), Sleeper(wheel, "cancelled", woken)
    wheel.schedule(moved, loop.time() + 0.3)
    wheel.schedule(moved, loop.time() + 0.05)  # earlier: a new entry; the later one goes stale
    wheel.schedule(moved, loop.time() + 0.2)  # later than the one set: ignored
    wheel.schedule(cancelled, loop.time() + 0.05)
    wheel.cancel(cancelled)
    # A sentinel due after every other deadline: once it wakes, whatever else was due has had its turn.
    wheel.schedule(Sleeper(wheel, "sentinel", woken), loop.time() + 0.35)
    await wait_until(lambda: woken and woken[-1][0] == "sentinel", timeout=5, what="the sentinel's wake-up")
    assert [name for name, _ in woken] == ["moved", "sentinel"], "one wake-up, the earliest; none for the cancelled"


async def test_a_sleeper_that_reschedules_into_the_past_does_not_spin() -> None:
    loop = asyncio.get_running_loop()
    wheel, woken = TimerWheel(), []
    sleeper = Sleeper(wheel, "s", woken)
    sleeper.again = loop.time() - 1.0  # already due: served on a later loop iteration, not in a busy loop
    wheel.schedule(sleeper, loop.time() + RESOLUTION)
    wheel.schedule(Sleeper(wheel, "sentinel", woken), loop.time() + 0.2)
    await wait_until(lambda: woken and woken[-1][0] == "sentinel", timeout=5, what="the sentinel's wake-up")
    assert [name for name, _ in woken] == ["s", "s", "sentinel"]
    assert sleeper.timer_slot == 0
