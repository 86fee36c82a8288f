"""Who may join the public Space's queue: so that one client cannot fill the shared queue (64 events) for everyone.

Gradio has no per-client limit, so the app attaches these checks as each event's `validator`, which Gradio runs
when a request asks to join, before it waits. Gradio runs the validators of simultaneous joins at once, before any
of them is queued, so counting the queue alone lets a burst through: each check counts and admits in one step
under a lock, and counts what it admitted in the last `settle_s` until Gradio has queued it.

- `BatchAdmission`: at most a few batches wait behind the running one, one per owner: a session, or on a Space a
  client, since a script opens as many sessions as it likes (a batch reads for up to a minute, so a few are all
  the queue should hold).
- `ClientAdmission`: one client (an address) may have at most so many requests of any kind waiting. On a Space,
  requests come through Hugging Face's proxy, so the address is the last entry of X-Forwarded-For, the one the
  proxy appended (entries before it are whatever the client sent); elsewhere it is the peer's address. An IPv6
  subscriber is handed a whole /64 and can send from any address in it, so IPv6 addresses count by their /64.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from typing import Callable, Iterable


UNKNOWN_CLIENT = "unknown"  # a request with no address to place it by


def client_address(request) -> str:
    """The client a request came from (a Starlette or Gradio request): its IPv4 address, or its IPv6 /64."""
    if request is None:
        return UNKNOWN_CLIENT
    if os.environ.get("SPACE_ID"):
        # every X-Forwarded-For line, in order: a proxy may add its own line instead of appending to the client's
        lines = getattr(request.headers, "getlist", None)
        forwarded = ",".join(lines("x-forwarded-for") if lines else [request.headers.get("x-forwarded-for", "")])
        if forwarded.strip(", "):
            return subscriber([entry.strip() for entry in forwarded.split(",") if entry.strip()][-1])
    client = getattr(request, "client", None)
    return subscriber(getattr(client, "host", None) or UNKNOWN_CLIENT)


def subscriber(address: str) -> str:
    """One client's key: an IPv4 address (also written IPv4-mapped), an IPv6 address's /64, anything else as given."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else str(parsed)


def waiting_events(demo) -> Iterable:
    """The events waiting in a launched Blocks' queue (not those running)."""
    queue = getattr(demo, "_queue", None)
    if queue is None:
        return []
    return [event for line in list(queue.event_queue_per_concurrency_id.values()) for event in list(line.queue)]


class BatchAdmission:
    """At most `max_waiting` batches wait, one per owner; a batch counts as waiting from its admission until
    Gradio has queued it, it has started (`started`), or `settle_s` has passed."""

    def __init__(self, settle_s: float = 2.0, clock=time.monotonic) -> None:
        self.settle_s, self.clock = settle_s, clock
        self.lock = threading.Lock()
        self.admitted: dict[str | None, float] = {}  # owner -> when, until the queue or the worker has it

    def refusal(self, waiting: Callable[[], list[str]], owner: str | None, max_waiting: int,
                seconds_each: float) -> str | None:
        with self.lock:
            now, queued = self.clock(), set(waiting())
            self.admitted = {o: when for o, when in self.admitted.items() if now - when <= self.settle_s and o not in queued}
            owners = queued | set(self.admitted)
            if owner in owners:
                return "Your previous batch is still waiting for its turn; its results appear here when it has been read."
            if len(owners) >= max_waiting:
                return (f"The Space is busy: {len(owners)} batches are waiting (each reads for up to "
                        f"{seconds_each:g} s). Try again in a few minutes, or analyse files one at a time "
                        "in the Single X-ray tab.")
            self.admitted[owner] = now
            return None

    def started(self, owner: str | None) -> None:
        with self.lock:
            self.admitted.pop(owner, None)


class ClientAdmission:
    """At most `max_waiting` requests of one client wait. The count is the larger of the client's events in the
    queue and its admissions not yet started (`started`; one never started stops counting after `settle_s`): a
    burst's validators all run before any of its events is queued, so there the admissions count; once queued,
    the queue does (without counting an event twice)."""

    def __init__(self, settle_s: float = 5.0, clock=time.monotonic) -> None:
        self.settle_s, self.clock = settle_s, clock
        self.lock = threading.Lock()
        self.recent: list[tuple[float, str]] = []  # (when, client) of the latest admissions

    def refusal(self, waiting: Callable[[], list[str]], client: str, max_waiting: int) -> str | None:
        if max_waiting <= 0:
            return None
        with self.lock:
            now = self.clock()
            self.recent = [(when, c) for when, c in self.recent if now - when <= self.settle_s]
            count = max(waiting().count(client), sum(c == client for _, c in self.recent))
            if count >= max_waiting:
                return (f"You have {count} requests waiting for an answer already: wait for them, then send more "
                        "(the Space answers one at a time, and everyone shares its queue).")
            self.recent.append((now, client))
            return None

    def started(self, client: str) -> None:
        with self.lock:
            for index, (_, c) in enumerate(self.recent):
                if c == client:
                    del self.recent[index]  # the oldest of its admissions: events of one client start in order
                    return
