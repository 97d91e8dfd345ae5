"""The official openai SDK against the AgentOS edge: plain, streaming, tool calls, errors.

Run by tests/tests/openai_api.rs with AGENTOS_BASE_URL and AGENTOS_TOKEN set.
"""

import json
import os

import openai

client = openai.OpenAI(base_url=os.environ["AGENTOS_BASE_URL"], api_key=os.environ["AGENTOS_TOKEN"], max_retries=0)
hello = [{"role": "user", "content": "hello there"}]

# Plain.
r = client.chat.completions.create(model="scripted", messages=hello)
assert r.choices[0].message.content == "hello there", r
assert r.choices[0].finish_reason == "stop", r
assert r.usage.total_tokens > 0, r

# Streaming, with usage.
text, usage, finish = "", None, None
for c in client.chat.completions.create(model="scripted", messages=hello, stream=True, stream_options={"include_usage": True}):
    if c.choices:
        text += c.choices[0].delta.content or ""
        finish = c.choices[0].finish_reason or finish
    if c.usage:
        usage = c.usage
assert text == "hello there", text
assert finish == "stop", finish
assert usage and usage.total_tokens > 0, usage

# Tool calls: the model asks for get_weather, then answers from the tool's result.
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ask = [{"role": "user", "content": "weather in Paris?"}]
r = client.chat.completions.create(model="scripted-tools", messages=ask, tools=tools)
call = r.choices[0].message.tool_calls[0]
assert r.choices[0].finish_reason == "tool_calls", r
assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, call
follow_up = ask + [r.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
r = client.chat.completions.create(model="scripted-tools", messages=follow_up, tools=tools)
assert r.choices[0].message.content == "It is sunny in Paris.", r

# Streamed tool calls.
calls = {}
for c in client.chat.completions.create(model="scripted-tools", messages=ask, tools=tools, stream=True):
    for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
        entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
        entry["name"] += (tc.function.name or "") if tc.function else ""
        entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}, calls

# Models.
ids = {m.id for m in client.models.list()}
assert {"scripted", "scripted-tools"} <= ids, ids

# Errors raise the SDK's typed exceptions.
def raises(exc, fn):
    try:
        fn()
    except exc:
        return
    raise AssertionError(f"expected {exc.__name__}")

raises(openai.NotFoundError, lambda: client.chat.completions.create(model="no-such-model", messages=hello))
raises(openai.BadRequestError, lambda: client.chat.completions.create(model="scripted", messages=hello, temperature=5))
raises(openai.BadRequestError, lambda: client.chat.completions.create(model="scripted-tools", messages=hello, max_tokens=100000))
bad = openai.OpenAI(base_url=os.environ["AGENTOS_BASE_URL"], api_key="not-a-token", max_retries=0)
raises(openai.AuthenticationError, lambda: bad.chat.completions.create(model="scripted", messages=hello))

print("all openai SDK checks passed")
