"""A tool worker in Python: serves the tool `py.upper` over the AgentOS bus protocol.

Run it beside AgentOS (`AGENTOS_NATS_URL` defaults to nats://127.0.0.1:4222) and give an agent
the tool `py.upper`. The protocol is in docs/bus-protocol.md: a NATS micro service whose endpoint
`agentos.tool.*.py.upper` (queue group `q`) declares the tool in its `agentos.tool` metadata
(description, JSON Schema of the arguments, idempotence, timeout), so the orchestrator shows the
model the schema, checks arguments against it before calling, and `GET /v1/tools` lists it. Each
request gets one JSON reply with header AgentOS-Schema: 1. Results are recorded by (tenant,
idempotency key) so a retried call returns the same answer; this example keeps them in memory, a
real worker keeps them somewhere durable.
"""

import asyncio
import json
import os
import signal

import nats
from nats.micro import add_service

TOOL = "py.upper"
SCHEMA = {"AgentOS-Schema": "1"}
# What the tool declares about itself: the bus protocol's ToolSpec.
SPEC = {
    "name": TOOL,
    "description": "Upper-cases a text.",
    "parameters": {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "the text to upper-case"}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "idempotent": True,
    "timeout_ms": 5000,
}


def error(code, message):
    return {"status": "error", "error": {"code": code, "message": message}, "retryable": False}


def upper(arguments):
    if not isinstance(arguments, dict) or not isinstance(arguments.get("text"), str):
        return error("invalid_arguments", 'expected {"text": "..."}')
    return {"status": "ok", "output": {"text": arguments["text"].upper()}}


async def main():
    # A local `agentos up` requires the platform's NATS user: `eval "$(agentos env)"` sets these.
    nc = await nats.connect(
        os.environ.get("AGENTOS_NATS_URL", "nats://127.0.0.1:4222"),
        user=os.environ.get("AGENTOS_NATS_USER"),
        password=os.environ.get("AGENTOS_NATS_PASSWORD"),
    )
    recorded = {}

    async def handle(msg):
        async def reply(body):
            await msg.respond(json.dumps(body).encode(), headers=SCHEMA)

        if (msg.headers or {}).get("AgentOS-Schema", "1") != "1":
            return await reply(error("invalid_request", "unsupported schema version"))
        tenant = msg.subject.split(".")[2]
        try:
            req = json.loads(msg.data)
        except ValueError as e:
            return await reply(error("invalid_request", f"malformed JSON: {e}"))
        if not isinstance(req, dict):
            return await reply(error("invalid_request", "expected a JSON object"))
        key = req.get("idempotency_key")
        if key and (tenant, key) in recorded:
            return await reply(recorded[(tenant, key)])
        result = upper(req.get("arguments"))
        if key:
            recorded[(tenant, key)] = result
        await reply(result)

    service = await add_service(
        nc, name="agentos-py-tools", version="0.1.0", description="py.upper", queue_group="q"
    )
    await service.add_endpoint(
        name="py_upper",
        subject=f"agentos.tool.*.{TOOL}",
        handler=handle,
        metadata={"agentos.tool": json.dumps(SPEC)},
    )
    await nc.flush()
    print(f"serving {TOOL}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
