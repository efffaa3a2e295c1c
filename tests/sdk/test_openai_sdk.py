"""The official `openai` Python SDK against tidegate by base-URL swap (config/demo.yaml)."""

import asyncio

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Summarize ticket 42"}]
ANSWER = "The tide rises and the gate holds steady while every model call"


def client(gw, **kw):
    # Any api key works: tidegate never forwards the client's credential.
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="sk-client-key", **kw)


def test_non_stream(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    resp = raw.parse()
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gpt-4o-mini+chunks=12+delay=2ms"  # the upstream model that answered
    assert resp.usage.completion_tokens == 12
    assert resp.usage.prompt_tokens > 0
    assert raw.headers["x-tidegate-route"] == "chat"
    assert raw.headers["x-tidegate-config-version"].startswith("v-")
    assert raw.headers["x-request-id"]


def test_stream_with_include_usage(gateway):
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 12
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_stream_without_usage_has_no_usage_chunk(gateway):
    chunks = list(client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_models_list_and_retrieve(gateway):
    c = client(gateway)
    ids = sorted(m.id for m in c.models.list())
    assert ids == ["budget", "capped", "chat", "claude", "down", "echo", "embeddings", "flaky", "weather", "weather-claude"]
    assert c.models.retrieve("echo").id == "echo"
    # A name a route matches is served, so it exists (helper-46: 404 for a served model).
    assert c.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def test_embeddings_default_base64_request(gateway):
    # The SDK asks for base64 unless told otherwise and decodes only strings: floats are fine.
    resp = client(gateway).embeddings.create(model="text-embedding-3-small", input=["tide", "gate"])
    assert len(resp.data) == 2
    assert len(resp.data[0].embedding) == 8
    assert all(isinstance(x, float) for x in resp.data[0].embedding)


def test_unknown_model_is_not_found(gateway):
    with pytest.raises(openai.NotFoundError) as e:
        client(gateway).chat.completions.create(model="gpt-9-ultra", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    assert e.value.response.headers["x-should-retry"] == "false"


def test_bad_request_is_bad_request(gateway):
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, max_completion_tokens=5)
    assert e.value.param == "max_tokens"


def test_failover_is_visible(gateway):
    raw = client(gateway).chat.completions.with_raw_response.create(model="flaky", messages=MESSAGES)
    assert raw.headers["x-tidegate-fallback"].startswith("target;reason=status_5xx")
    assert raw.headers["x-tidegate-provider"] == "backup"
    assert raw.parse().model == "backup-mini"


def test_terminal_502_is_not_retried_by_the_sdk(gateway):
    series = 'tidegate_upstream_attempts_total{model="down-primary+status=503",outcome="error",provider="sim",reason="status_5xx"}'
    before = gateway.metric(series)
    with pytest.raises(openai.InternalServerError) as e:
        client(gateway, max_retries=2).chat.completions.create(model="down", messages=MESSAGES)
    assert e.value.status_code == 502
    assert e.value.code == "upstream_unavailable"
    # One logical call, exactly the attempts tidegate decided: one on the primary.
    assert gateway.metric(series) - before == 1


def test_async_client(gateway):
    async def run():
        c = openai.AsyncOpenAI(base_url=gateway.base + "/v1", api_key="x")
        resp = await c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "async works"}])
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="nope", messages=MESSAGES)
        await c.close()
        return resp.choices[0].message.content, text

    content, text = asyncio.run(run())
    assert content == "async works"
    assert text == ANSWER


def test_idempotency_key_replays_without_a_second_call(gateway):
    c = client(gateway)
    key = {"Idempotency-Key": "sdk-job-7"}
    msgs = [{"role": "user", "content": "charge the card once"}]
    first = c.chat.completions.with_raw_response.create(model="echo", messages=msgs, extra_headers=key)
    again = c.chat.completions.with_raw_response.create(model="echo", messages=msgs, extra_headers=key)
    assert again.headers["x-tidegate-idempotent-replay"] == "true"
    assert "x-tidegate-idempotent-replay" not in first.headers
    assert again.parse().id == first.parse().id
    assert again.parse().choices[0].message.content == "charge the card once"
    # A stream is replayed as a stream the SDK reads like the first.
    skey = {"Idempotency-Key": "sdk-stream-7"}
    texts = []
    for _ in range(2):
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=skey)
        texts.append("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices))
    assert texts == [ANSWER, ANSWER]
    # The same key with another request: 422, which the SDK does not retry.
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.chat.completions.create(model="echo", messages=MESSAGES, extra_headers=key)
    assert e.value.code == "idempotency_key_reused"


def test_output_clamp_input_ceiling_and_cost_header(gateway):
    c = client(gateway)
    raw = c.chat.completions.with_raw_response.create(model="capped", messages=MESSAGES, max_tokens=100)
    resp = raw.parse()
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 5
    assert float(raw.headers["x-tidegate-cost-usd"]) == 0.0  # the mock model has no price
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="capped", messages=[{"role": "user", "content": "word " * 100}])
    assert e.value.code == "input_tokens_exceeded"


def test_budget_exhausted_is_a_rate_limit_error(gateway):
    c = client(gateway, max_retries=0)
    costs = []
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(20):
            raw = c.chat.completions.with_raw_response.create(model="budget", messages=MESSAGES)
            costs.append(float(raw.headers["x-tidegate-cost-usd"]))
    assert e.value.code == "budget_exhausted"
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert costs and all(x > 0 for x in costs)
    assert sum(costs) <= 0.0001
