"""Real clients against a platform started with `agentos up --tls` (TLS and mTLS on both doors).

Usage: tls_clients.py '<settings json>' where the settings are
  {"base_url": "https://…/v1", "token": "<dev token>", "ca": …,
   "mapped": [cert, key],    # the client certificate `up --tls` maps to tenant dev, principal dev
   "unmapped": [cert, key],  # a valid client certificate of the CA that maps to no principal
   "nats": <`agentos tenant credentials dev --json`, with its "tls" files>}

HTTPS: the official openai SDK (its httpx client, `openai.DefaultHttpxClient`, with verify= an SSL
context of the CA and the client certificate) completes chat
completions authenticated by the certificate alone and by a token; a run is created and waited
for with the certificate alone; without a client certificate the handshake is refused.
NATS: nats-py with the CA and the tenant's client certificate reads that run's record with a
direct get; without a client certificate it is refused. Prints one JSON summary line.
"""

import asyncio
import json
import ssl
import sys

import nats
import openai


def context(ca: str, cert: list | None) -> ssl.SSLContext:
    """Trusts the dev CA; presents `cert` ([cert, key]) when given."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


def http_checks(s: dict) -> dict:
    out: dict = {}
    ca, mapped = s["ca"], context(s["ca"], s["mapped"])
    hello = [{"role": "user", "content": "hello over mTLS"}]

    # The certificate alone: the SDK's Authorization header is explicitly left out.
    no_token = {"Authorization": openai.Omit()}
    with openai.DefaultHttpxClient(verify=mapped) as http:
        client = openai.OpenAI(base_url=s["base_url"], api_key="unused", http_client=http, max_retries=0)
        r = client.chat.completions.create(model="scripted", messages=hello, extra_headers=no_token)
        out["chat_by_certificate"] = r.choices[0].message.content
        out["models"] = sorted(m.id for m in client.models.list(extra_headers=no_token))

        # A run, created and awaited with the certificate alone.
        root = s["base_url"].removesuffix("/v1")
        r = http.post(f"{root}/v1/runs", json={"agent_id": "smoke", "input": "what is 6*7?"})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        done = http.get(f"{root}/v1/runs/{run_id}/wait", params={"timeout_s": 20}).json()
        out["run"] = {"id": run_id, "status": done["status"], "output": done.get("output")}

    # A token with a client certificate: the token says who calls.
    with openai.DefaultHttpxClient(verify=mapped) as http:
        client = openai.OpenAI(base_url=s["base_url"], api_key=s["token"], http_client=http, max_retries=0)
        stream = client.chat.completions.create(model="scripted", messages=hello, stream=True)
        out["chat_by_token_streamed"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    # A valid certificate that maps to no principal, and no token: 401.
    with openai.DefaultHttpxClient(verify=context(ca, s["unmapped"])) as http:
        r = http.get(f"{s['base_url']}/models")
        out["unmapped_without_token"] = [r.status_code, r.json()["error"]["code"]]

    # No client certificate: refused at the handshake.
    with openai.DefaultHttpxClient(verify=context(ca, None)) as http:
        try:
            http.get(f"{s['base_url']}/models")
            out["no_certificate"] = "answered"
        except Exception as e:  # noqa: BLE001 - the refusal's type is what is reported
            out["no_certificate"] = type(e).__name__
    # And the server is verified: a client that does not trust the dev CA refuses the edge.
    untrusting = ssl.create_default_context()
    untrusting.load_cert_chain(s["mapped"][0], s["mapped"][1])
    with openai.DefaultHttpxClient(verify=untrusting) as http:
        try:
            http.get(f"{s['base_url']}/models")
            out["untrusted_server"] = "answered"
        except Exception as e:  # noqa: BLE001 - the refusal's type is what is reported
            out["untrusted_server"] = "CERTIFICATE_VERIFY_FAILED" if "CERTIFICATE_VERIFY_FAILED" in str(e) else str(e)
    return out


async def nats_checks(creds: dict, run_id: str) -> dict:
    out: dict = {}
    tls = creds["tls"]
    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.load_cert_chain(tls["cert"], tls["key"])
    nc = await nats.connect(creds["url"], tls=ctx, user=creds["user"], password=creds["password"],
                            allow_reconnect=False, connect_timeout=5)
    subject = creds["subjects"]["run_record"].replace("<run_id>", run_id)
    msg = await nc.request(subject, b"", timeout=5)
    record = json.loads(msg.data)
    out["record"] = {"status": record["status"], "output": record.get("output")}
    await nc.close()

    # Plain text: nats-server requires TLS of every client.
    try:
        nc = await nats.connect(creds["url"], user=creds["user"], password=creds["password"],
                                allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
        out["plain_text"] = "connected"
        await nc.close()
    except Exception as e:  # noqa: BLE001 - the refusal's type is what is reported
        out["plain_text"] = type(e).__name__

    # The CA but no client certificate: nats-server (verify: true) refuses the handshake.
    bare = ssl.create_default_context(cafile=tls["ca"])
    try:
        nc = await nats.connect(creds["url"], tls=bare, user=creds["user"], password=creds["password"],
                                allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)
        out["no_certificate"] = "connected"
        await nc.close()
    except Exception as e:  # noqa: BLE001 - the refusal's type is what is reported
        out["no_certificate"] = type(e).__name__
    return out


def main() -> None:
    s = json.loads(sys.argv[1])
    summary = {"http": http_checks(s)}
    summary["nats"] = asyncio.run(nats_checks(s["nats"], summary["http"]["run"]["id"]))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
