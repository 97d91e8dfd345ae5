"""The clients people use, through AgentOS, against one model: the compatibility matrix.

The official openai SDK (chat plain and streamed, tools auto / named / required, structured
output, models.retrieve), the OpenAI Agents SDK (Runner.run and run_streamed with a
@function_tool through OpenAIChatCompletionsModel) and LangChain's ChatOpenAI (invoke, stream,
bind_tools, with_structured_output). Run by tests/tests/compat.rs against the quirky fake
upstream, and by tests/tests/llama.rs against a real model, with AGENTOS_BASE_URL, AGENTOS_TOKEN
and AGENTOS_MODEL set; AGENTOS_REAL_MODEL=1 relaxes the checks on what the model says (a 270M
model's words are its own) to the shape of each answer. Prints one line per check and the client
versions; exits non-zero on the first failure.
"""

import asyncio
import json
import os
import sys
from importlib.metadata import version

import openai
from pydantic import BaseModel

BASE = os.environ["AGENTOS_BASE_URL"]
TOKEN = os.environ["AGENTOS_TOKEN"]
MODEL = os.environ["AGENTOS_MODEL"]
REAL = os.environ.get("AGENTOS_REAL_MODEL") == "1"

print("clients: " + ", ".join(f"{p} {version(p)}" for p in ["openai", "openai-agents", "langchain-openai", "langchain-core"]))

results = []


def check(name, fn):
    try:
        detail = fn()
    except Exception as e:  # a failed check is reported, then the run fails
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        results.append(False)
        return
    print(f"ok   {name}" + (f": {detail}" if detail else ""))
    results.append(True)


class Weather(BaseModel):
    city: str
    sunny: bool


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
LONG_TOOL = {"type": "function", "function": {
    "name": "get_current_weather_in_city", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]

client = openai.OpenAI(base_url=BASE, api_key=TOKEN, max_retries=0, timeout=120)


def usage_known(u):
    assert u is not None and u.total_tokens > 0, f"usage {u}"
    return f"usage {u.total_tokens}" + (" (estimated)" if getattr(u, "estimated", False) else "")


# --- the official openai SDK -------------------------------------------------------------

def sdk_plain():
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_completion_tokens=24)
    text = r.choices[0].message.content
    assert text and text.strip(), r
    if not REAL:
        assert text == "Hello from upstream", text
    return f"{text!r}, {usage_known(r.usage)}"


def sdk_streamed():
    text, usage = "", None
    for c in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                            max_completion_tokens=24, stream=True, stream_options={"include_usage": True}):
        if c.choices:
            text += c.choices[0].delta.content or ""
        usage = c.usage or usage
    assert text.strip(), text
    return f"{text!r}, {usage_known(usage)}"


def one_call(r, name="get_weather"):
    calls = r.choices[0].message.tool_calls
    assert calls, r
    assert calls[0].function.name == name, calls
    args = json.loads(calls[0].function.arguments)
    assert "city" in args, args
    return calls[0]


def sdk_tools(choice):
    def run():
        kw = {} if choice is None else {"tool_choice": choice}
        r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL], **kw)
        if REAL and choice is None and not r.choices[0].message.tool_calls:
            return f"(the model answered in words: {r.choices[0].message.content!r})"
        call = one_call(r)
        # The second turn: the assistant message as the SDK returns it (content null), the result.
        follow = ASK + [r.choices[0].message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
        r2 = client.chat.completions.create(model=MODEL, messages=follow, tools=[WEATHER_TOOL], tool_choice="none")
        assert r2.choices[0].message.content, r2
        return f"{call.function.name}({call.function.arguments}) id {len(call.id)} chars, then {r2.choices[0].message.content[:40]!r}"
    return run


def sdk_long_name_streamed():
    # The stream helper accumulates every fragment the way clients do.
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[LONG_TOOL],
                                        tool_choice={"type": "function", "function": {"name": LONG_TOOL["function"]["name"]}}) as s:
        final = s.get_final_completion()
    call = one_call(final, LONG_TOOL["function"]["name"])
    return f"{call.function.name} id {len(call.id)} chars"


def sdk_structured():
    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris as JSON."}],
                                      response_format=Weather, max_completion_tokens=64)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Weather), r
    return repr(parsed)


def sdk_models_retrieve():
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL, m
    return m.owned_by


check("openai: chat", sdk_plain)
check("openai: chat streamed", sdk_streamed)
check("openai: tools auto", sdk_tools(None))
check("openai: tools named", sdk_tools({"type": "function", "function": {"name": "get_weather"}}))
if not REAL:
    # llama-cpp-python does not constrain "required"; named choice is what forces a call there.
    check("openai: tools required", sdk_tools("required"))
check("openai: tools streamed, long name", sdk_long_name_streamed)
check("openai: structured output", sdk_structured)
check("openai: models.retrieve", sdk_models_retrieve)


# --- the OpenAI Agents SDK ---------------------------------------------------------------

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled  # noqa: E402

set_tracing_disabled(True)
calls_seen = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    calls_seen.append(city)
    return f"sunny in {city}"


def agent():
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=openai.AsyncOpenAI(base_url=BASE, api_key=TOKEN, max_retries=0))
    # A small real model calls a tool only when told to; then it must stop calling.
    settings = ModelSettings(tool_choice="get_weather") if REAL else ModelSettings()
    return Agent(name="weather", instructions="Answer with the tool's result.", model=model,
                 tools=[get_weather], model_settings=settings, reset_tool_choice=True)


def tool_called(result):
    """The SDK ran the tool, or (a real small model) asked for it by name with arguments that
    did not parse: the call went through AgentOS intact either way."""
    if calls_seen:
        return f"tool called with {calls_seen[0]!r}"
    asked = [i.raw_item for i in result.new_items if type(i).__name__ == "ToolCallItem"]
    assert REAL and asked, f"the tool was not called: {result.new_items}"
    assert asked[0].name == "get_weather", asked
    return f"get_weather asked for with arguments the SDK could not parse: {asked[0].arguments!r}"


def agents_run():
    calls_seen.clear()
    r = asyncio.run(Runner.run(agent(), "What is the weather in Paris?", max_turns=4))
    called = tool_called(r)
    assert r.final_output, r
    return f"{called}, answer {str(r.final_output)[:40]!r}"


def agents_run_streamed():
    calls_seen.clear()

    async def go():
        s = Runner.run_streamed(agent(), "What is the weather in Paris?", max_turns=4)
        kinds = set()
        async for ev in s.stream_events():
            kinds.add(ev.type)
        return s, kinds

    s, kinds = asyncio.run(go())
    called = tool_called(s)
    assert s.final_output, s
    return f"{called}, events {sorted(kinds)}, answer {str(s.final_output)[:40]!r}"


check("agents: Runner.run with a @function_tool", agents_run)
check("agents: Runner.run_streamed", agents_run_streamed)


# --- LangChain's ChatOpenAI --------------------------------------------------------------

from langchain_openai import ChatOpenAI  # noqa: E402

llm = ChatOpenAI(model=MODEL, base_url=BASE, api_key=TOKEN, max_retries=0, max_tokens=48, timeout=120)


def lc_invoke():
    r = llm.invoke("Say hello.")
    assert r.content, r
    u = r.usage_metadata
    assert u and u["total_tokens"] > 0, u
    return f"{r.content!r}, usage_metadata total {u['total_tokens']}"


def lc_stream():
    chunks = list(llm.stream("Say hello."))
    text = "".join(c.content for c in chunks if isinstance(c.content, str))
    assert text.strip(), chunks
    return repr(text)


def lc_bind_tools():
    kw = {"tool_choice": "get_weather"} if REAL else {}
    r = llm.bind_tools([WEATHER_TOOL], **kw).invoke("What is the weather in Paris?")
    if REAL and not r.tool_calls and r.invalid_tool_calls and r.response_metadata.get("finish_reason") != "stop":
        # A small model may ramble inside the constrained JSON until the token limit cuts it.
        bad = r.invalid_tool_calls[0]
        assert bad["name"] == "get_weather", r
        return f"{bad['name']}, arguments cut at the token limit: {bad['args']!r}"
    assert r.tool_calls and r.tool_calls[0]["name"] == "get_weather", r
    return f"{r.tool_calls[0]['name']}({r.tool_calls[0]['args']})"


def lc_structured(method):
    def run():
        r = llm.with_structured_output(Weather, method=method).invoke("Weather in Paris?")
        assert isinstance(r, Weather), r
        return repr(r)
    return run


check("langchain: invoke", lc_invoke)
check("langchain: stream", lc_stream)
check("langchain: bind_tools", lc_bind_tools)
check("langchain: with_structured_output (json_schema)", lc_structured("json_schema"))
check("langchain: with_structured_output (function_calling)", lc_structured("function_calling"))

print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
