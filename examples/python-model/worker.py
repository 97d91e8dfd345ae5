"""A model worker in Python: serves the model `py.reverse` over the AgentOS bus protocol.

It answers with the last user message reversed, streamed word by word: a stand-in for a model
you run yourself (a local inference server, a research model) beside AgentOS's own model
workers. Run it beside AgentOS (`eval "$(agentos env)"` for a local `agentos up`), then call
the model through the OpenAI-compatible API or give an agent the model `py.reverse`.

The protocol is in docs/bus-protocol.md ("Model call"): a NATS micro service named
`agentos-model` with one endpoint per model, `agentos.model.*.<model>`; zero or more `delta`
replies, then one `final` (or `error`), each with the header AgentOS-Schema: 1.
"""

import asyncio
import json
import os
import signal

import nats
from nats.micro import add_service
from nats.micro.service import EndpointConfig, ServiceConfig

MODEL = "py.reverse"
SCHEMA = {"AgentOS-Schema": "1"}


def answer(request):
    """The reply text for a model request, or an error body."""
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list):
        return None, {"code": "invalid_request", "message": "expected {\"messages\": [...]}"}
    user = [m.get("content") or "" for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not user:
        return None, {"code": "invalid_request", "message": "no user message"}
    return user[-1][::-1], None


async def main():
    nc = await nats.connect(
        os.environ.get("AGENTOS_NATS_URL", "nats://127.0.0.1:4222"),
        user=os.environ.get("AGENTOS_NATS_USER"),
        password=os.environ.get("AGENTOS_NATS_PASSWORD"),
    )

    async def handle(req):
        async def send(body):
            # Every reply goes to the request's reply inbox: deltas, then the final one.
            await req.respond(json.dumps(body).encode(), headers=SCHEMA)

        headers = req.headers or {}
        tenant = req.subject.split(".")[2]
        # The subject is the tenant: a request claiming another one is refused.
        if headers.get("AgentOS-Tenant", tenant) != tenant:
            return await send({"type": "error", "error": {"code": "tenant_mismatch", "message": "header and subject disagree"}})
        try:
            request = json.loads(req.data)
        except ValueError as e:
            return await send({"type": "error", "error": {"code": "invalid_request", "message": f"malformed JSON: {e}"}})
        text, err = answer(request)
        if err:
            return await send({"type": "error", "error": err})
        words = text.split(" ")
        for i, word in enumerate(words):
            await send({"type": "delta", "text": word if i == 0 else " " + word})
        tokens = len(words)
        await send({
            "type": "final",
            "message": {"role": "assistant", "content": text},
            "usage": {"prompt_tokens": tokens, "completion_tokens": tokens, "total_tokens": 2 * tokens},
            "finish_reason": "stop",
        })

    service = await add_service(nc, ServiceConfig(
        name="agentos-model",
        version="0.1.0",
        description="AgentOS model worker (Python example)",
        metadata={f"model.{MODEL}": "python"},
        queue_group="q",
    ))
    await service.add_endpoint(EndpointConfig(
        name="py-reverse", subject=f"agentos.model.*.{MODEL}", handler=handle, queue_group="q",
    ))
    await nc.flush()
    print(f"serving {MODEL}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
