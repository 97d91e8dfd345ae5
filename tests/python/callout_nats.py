"""A tenant's nats-py client that logs in with the same bearer token it uses at the edge (the NATS
auth callout, `agentos up --auth-callout`).

Usage: callout_nats.py '<json: url, tenant, other, agent, token, expired_token, edge, admin_token, jti>'

With the token it submits a run on the bus, follows the run's events live and reads its record
with a direct get. It is refused for the other tenant's subjects (permissions violation) and,
with an expired token, at connect (authorization violation). Then it revokes its token through
the edge's admin route and measures how long until a new connection is refused, and until the
connection it holds is closed. Prints one JSON summary line; exits non-zero on any surprise.
"""

import asyncio
import json
import os
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone

import nats
from nats.errors import Error as NatsError

DEADLINE = 30.0


def uuid7() -> str:
    """A time-ordered run id (UUIDv7), like the edge's."""
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
        "input": "hello over the auth callout",
        "metadata": {"via": "nats-py callout"},
        "submitted_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
    }).encode()


async def connect(url: str, token: str, **kw):
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    nc = await nats.connect(url, token=token, error_cb=on_error, allow_reconnect=False,
                            connect_timeout=5, **kw)
    return nc, errors


async def refused_at_connect(url: str, token: str) -> str:
    try:
        nc, _ = await connect(url, token)
    except (NatsError, OSError, asyncio.TimeoutError) as e:
        return str(e) or type(e).__name__
    await nc.close()
    return "connected"


async def wait_for(errors: list[str], needle: str) -> str:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        hit = next((e for e in errors if needle in e), None)
        if hit:
            return hit
        await asyncio.sleep(0.01)
    return "no error"


async def main() -> None:
    p = json.loads(sys.argv[1])
    url, tenant, other, agent = p["url"], p["tenant"], p["other"], p["agent"]
    summary: dict = {"tenant": tenant}

    nc, errors = await connect(url, p["token"])
    js = nc.jetstream()

    # My own tenant: follow my events, submit a run, read its record.
    events: list[tuple[str, dict]] = []
    terminal = asyncio.Event()

    async def on_event(msg) -> None:
        ev = json.loads(msg.data)
        events.append((msg.subject, ev))
        if ev.get("type") in ("run.completed", "run.failed", "run.cancelled"):
            terminal.set()

    await nc.subscribe(f"agentos.events.{tenant}.>", cb=on_event)
    await nc.flush()
    run_id = uuid7()
    ack = await js.publish(f"agentos.runs.{tenant}.submit", run_request(tenant, agent, run_id),
                           headers={"Nats-Msg-Id": run_id})
    summary["run_id"], summary["submit_stream"] = run_id, ack.stream
    await asyncio.wait_for(terminal.wait(), DEADLINE)
    summary["live_events"] = [ev["type"] for _, ev in events]
    summary["event_subjects_mine"] = all(s.startswith(f"agentos.events.{tenant}.") for s, _ in events)
    # The record is a projection of the journal: it follows the terminal event shortly.
    status, deadline = None, time.monotonic() + DEADLINE
    while status not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        msg = await nc.request(f"$JS.API.DIRECT.GET.KV_agentos-runs.$KV.agentos-runs.{tenant}.{run_id}",
                               b"", timeout=5)
        status = json.loads(msg.data)["status"] if msg.data else None
        await asyncio.sleep(0.05)
    summary["record_status"] = status

    # The other tenant's subjects: permissions violations, on subscribe and on publish.
    refusals: dict = {}
    await nc.subscribe(f"agentos.events.{other}.>")
    refusals["subscribe_events"] = await wait_for(errors, f"agentos.events.{other}.>")
    await nc.publish(f"agentos.runs.{other}.submit", run_request(other, agent, uuid7()))
    await nc.flush()
    refusals["publish_submit"] = await wait_for(errors, f"agentos.runs.{other}.submit")
    summary["refusals"] = refusals

    # An expired token: refused at connect.
    summary["expired"] = await refused_at_connect(url, p["expired_token"])

    # Revoke my token at the edge: a new connection is refused, the open one closed.
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    held, _ = await connect(url, p["token"], closed_cb=on_closed)
    req = urllib.request.Request(
        f"{p['edge']}/v1/admin/tokens/revoke", method="POST",
        data=json.dumps({"jti": p["jti"]}).encode(),
        headers={"Authorization": f"Bearer {p['admin_token']}", "Content-Type": "application/json"})
    revoked_at = time.monotonic()
    with urllib.request.urlopen(req, timeout=10) as r:
        summary["revoke_status"] = r.status
    outcome = "connected"
    while outcome == "connected" and time.monotonic() - revoked_at < DEADLINE:
        outcome = await refused_at_connect(url, p["token"])
    summary["revoked"] = outcome
    summary["revoked_refused_after_s"] = round(time.monotonic() - revoked_at, 3)
    try:
        await asyncio.wait_for(closed.wait(), DEADLINE)
        summary["held_closed_after_s"] = round(time.monotonic() - revoked_at, 3)
    except asyncio.TimeoutError:
        summary["held_closed_after_s"] = None
    await nc.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    asyncio.run(main())
