"""The official openai SDK's embeddings against the AgentOS edge (model `local-embed`, the
deterministic `hash` backend): base64 (the SDK's default) and float, many inputs, errors.

Run by tests/tests/memory.rs with AGENTOS_BASE_URL and AGENTOS_TOKEN set.
"""

import math
import os

import openai

client = openai.OpenAI(base_url=os.environ["AGENTOS_BASE_URL"], api_key=os.environ["AGENTOS_TOKEN"], max_retries=0)

# The SDK asks for base64 and decodes it itself.
r = client.embeddings.create(model="local-embed", input=["my favorite color is teal", "My favorite COLOR is teal!", "trains leave at noon"])
assert r.object == "list" and r.model == "local-embed", r
assert [d.index for d in r.data] == [0, 1, 2], r
a, b, c = (d.embedding for d in r.data)
assert len(a) == 256, len(a)
assert a == b, "the same words give the same vector"
assert abs(math.sqrt(sum(x * x for x in a)) - 1.0) < 1e-5, "unit length"
assert a != c
assert r.usage.prompt_tokens == 14 and r.usage.total_tokens == 14, r.usage

# Floats, one string, chosen dimensions.
f = client.embeddings.create(model="local-embed", input="my favorite color is teal", encoding_format="float", dimensions=256)
assert f.data[0].embedding == a, "float and base64 agree"
small = client.embeddings.create(model="local-embed", input="x y z", dimensions=16)
assert len(small.data[0].embedding) == 16

# Errors are typed.
try:
    client.embeddings.create(model="no-such-model", input="x")
    raise SystemExit("an unknown model must fail")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    client.embeddings.create(model="local-embed", input=[1, 2, 3])
    raise SystemExit("token arrays must fail")
except openai.BadRequestError as e:
    assert e.body["code"] == "unsupported_input", e.body
try:
    client.embeddings.create(model="scripted", input="x")
    raise SystemExit("a chat-only model must fail")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

print("all openai SDK embeddings checks passed")
