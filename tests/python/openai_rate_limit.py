"""The official openai SDK against an edge whose tenant is rate limited: the SDK's own retry
honours the edge's 429 (Retry-After / retry-after-ms) and every call succeeds.

Run by tests/tests/quotas.rs with AGENTOS_BASE_URL and AGENTOS_TOKEN set; prints one JSON line.
"""

import json
import os
import time

import httpx
import openai

seen = []


def note(response):
    if response.status_code == 429:
        seen.append(
            {
                "retry_after": response.headers.get("retry-after"),
                "retry_after_ms": response.headers.get("retry-after-ms"),
                "remaining": response.headers.get("x-ratelimit-remaining-requests"),
                "at": time.monotonic(),
            }
        )


client = openai.OpenAI(
    base_url=os.environ["AGENTOS_BASE_URL"],
    api_key=os.environ["AGENTOS_TOKEN"],
    max_retries=8,
    http_client=httpx.Client(event_hooks={"response": [note]}),
)
start = time.monotonic()
answers = []
for i in range(4):
    r = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": f"call {i}"}])
    answers.append(r.choices[0].message.content)
print(json.dumps({"answers": answers, "limited": seen, "elapsed_s": time.monotonic() - start}))
