"""One timer for every connection of a node: a wheel of 50 ms slots, each a list of clients to wake.

Every connection needs one wake-up at a time (its next ping, pong deadline, expiry or presence refresh). An
asyncio TimerHandle per connection costs ~250 bytes with its bound method and copied context, which is ~1.5%
of an idle connection's memory; a list entry costs 8. A client that moves its wake-up earlier simply gets a
new entry: the old one is recognised as stale (``slot`` no longer matches) and skipped when its slot fires.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Final, Protocol

RESOLUTION: Final = 0.05  # seconds per slot: wake-ups happen up to this much after their deadline


class Sleeper(Protocol):
    timer_slot: int  # the slot the client waits for, 0 = none

    def on_timer(self) -> None: ...


class TimerWheel:
    __slots__ = ("_armed", "_handle", "_heap", "_loop", "_slots")

    def __init__(self) -> None:
        self._slots: dict[int, list[Sleeper]] = {}
        self._heap: list[int] = []  # slot numbers with a list in _slots
        self._armed = 0  # the slot the loop timer is set for, 0 = none
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def schedule(self, sleeper: Sleeper, when: float) -> None:
        """Wake ``sleeper`` at loop time ``when`` (rounded up to the slot), unless it waits for an earlier slot."""
        slot = max(math.ceil(when / RESOLUTION), 1)
        if sleeper.timer_slot and sleeper.timer_slot <= slot:
            return  # an earlier (or the same) wake-up is set; on_timer schedules the next one
        sleeper.timer_slot = slot
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = []
            heapq.heappush(self._heap, slot)
        entries.append(sleeper)
        if not self._armed or slot < self._armed:
            self._arm(slot)

    @staticmethod
    def cancel(sleeper: Sleeper) -> None:
        sleeper.timer_slot = 0  # its entry is skipped when the slot fires

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._armed = slot
        self._handle = self._loop.call_at(slot * RESOLUTION, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        self._handle = None
        self._armed = 0
        # A loop timer may fire a clock resolution early: round the present up by a microsecond.
        current = math.floor((self._loop.time() + 1e-6) / RESOLUTION)
        heap = self._heap
        due = []
        while heap and heap[0] <= current:
            due.append(heapq.heappop(heap))
        # Only the slots due now: a client that schedules itself into a past slot from on_timer waits for the
        # next loop iteration, so a wake-up that makes no progress cannot spin here.
        for slot in due:
            for sleeper in self._slots.pop(slot):
                if sleeper.timer_slot == slot:
                    sleeper.timer_slot = 0
                    sleeper.on_timer()
        if heap and not self._armed:
            self._arm(heap[0])
