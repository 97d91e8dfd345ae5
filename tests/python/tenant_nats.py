"""A tenant's own NATS client (nats-py), with the credentials `agentos tenant credentials` printed.

Usage: tenant_nats.py '<credentials json of tenant A>' '<credentials json of tenant B>' <agent id>

As tenant A it submits a run straight onto the bus, follows its events live, and reads the run
record and last event with direct gets. Then it tries tenant B's subjects and expects each to be
refused at once with a clear error. Prints one JSON summary line; exits non-zero on any surprise.
"""

import asyncio
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import nats
from nats.errors import NoRespondersError
from nats.js.errors import NoStreamResponseError

DEADLINE = 30.0


def uuid7() -> str:
    """A time-ordered run id (UUIDv7), like the edge's, so run lists stay in submission order."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def run_request(tenant: str, agent: str, run_id: str) -> bytes:
    return json.dumps({
        "type": "run",
        "run_id": run_id,
        "tenant": tenant,
        "agent_id": agent,
        "input": "hello from nats-py",
        "metadata": {"via": "nats-py"},
        "submitted_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
    }).encode()


def record_subject(tenant: str, run_id: str) -> str:
    return f"$JS.API.DIRECT.GET.KV_agentos-runs.$KV.agentos-runs.{tenant}.{run_id}"


async def main() -> None:
    mine, other, agent = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    tenant, theirs = mine["tenant"], other["tenant"]
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(mine["url"], user=mine["user"], password=mine["password"],
                            error_cb=on_error, allow_reconnect=False)
    js = nc.jetstream()
    summary: dict = {"tenant": tenant}

    # Follow my events live, then submit a run of my own.
    events: list[tuple[str, dict]] = []
    terminal = asyncio.Event()

    async def on_event(msg) -> None:
        ev = json.loads(msg.data)
        events.append((msg.subject, ev))
        if ev.get("type") in ("run.completed", "run.failed", "run.cancelled"):
            terminal.set()

    await nc.subscribe(mine["subjects"]["events"], cb=on_event)
    await nc.flush()
    run_id = uuid7()
    ack = await js.publish(mine["subjects"]["submit"], run_request(tenant, agent, run_id),
                           headers={"Nats-Msg-Id": run_id})
    summary["submit_stream"] = ack.stream

    # The record is the source of truth: poll it with a direct get until the run ends.
    deadline = time.monotonic() + DEADLINE
    record = None
    while time.monotonic() < deadline:
        msg = await nc.request(record_subject(tenant, run_id), b"", timeout=2)
        if msg.data:
            record = json.loads(msg.data)
            if record["status"] in ("completed", "failed", "cancelled"):
                break
        await asyncio.sleep(0.05)
    assert record is not None, "no run record"
    summary["status"], summary["output"] = record["status"], record.get("output")
    await asyncio.wait_for(terminal.wait(), DEADLINE)
    summary["live_events"] = [ev["type"] for _, ev in events]
    summary["event_subjects_mine"] = all(s.startswith(f"agentos.events.{tenant}.") for s, _ in events)
    last = await nc.request(f"$JS.API.DIRECT.GET.AGENTOS_EVENTS.agentos.events.{tenant}.{run_id}", b"", timeout=2)
    summary["last_event"] = json.loads(last.data)["type"]

    # The other tenant: every door is refused at once, none hangs until a timeout.
    refusals: dict = {}
    started = time.monotonic()
    try:
        await js.publish(f"agentos.runs.{theirs}.submit", run_request(theirs, agent, uuid7()), timeout=5)
        refusals["submit"] = "accepted"
    except (NoStreamResponseError, NoRespondersError) as e:
        refusals["submit"] = type(e).__name__
    try:
        await nc.request(record_subject(theirs, run_id), b"", timeout=5)
        refusals["read_record"] = "answered"
    except NoRespondersError as e:
        refusals["read_record"] = type(e).__name__
    summary["refusal_seconds"] = round(time.monotonic() - started, 3)

    await nc.subscribe(f"agentos.events.{theirs}.>")
    deadline = time.monotonic() + DEADLINE
    while not any("permissions violation" in e for e in errors) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    refusals["subscribe_events"] = next((e for e in errors if "permissions violation" in e), "no error")
    summary["refusals"] = refusals
    await nc.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
