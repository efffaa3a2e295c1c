"""The official `anthropic` SDK against /v1/messages (served by an Anthropic-wire upstream and by
an OpenAI-style one), and the `openai` SDK served by an Anthropic-wire upstream."""

import json
import time

import anthropic
import openai
import pytest
from conftest import launch

ANSWER = "The tide rises and the gate holds steady while every model call"
USER = [{"role": "user", "content": "Summarize ticket 42"}]
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                 "parameters": TOOLS[0]["input_schema"]}}]


def aclient(gw):
    return anthropic.Anthropic(base_url=gw.base, api_key="client-key")


# model -> the route it selects: "claude-haiku-4-5" is served by the Anthropic-wire mock,
# "gpt-4o-mini" by the OpenAI-wire mock (translated both ways).
@pytest.mark.parametrize("model,upstream", [
    ("claude-haiku-4-5", "claude-haiku-4-5+chunks=12+delay=2ms"),
    ("gpt-4o-mini", "gpt-4o-mini+chunks=12+delay=2ms"),
])
def test_messages_plain_and_stream(gateway, model, upstream):
    c = aclient(gateway)
    msg = c.messages.create(model=model, max_tokens=100, messages=USER)
    assert msg.type == "message"
    assert msg.content[0].text == ANSWER
    assert msg.stop_reason == "end_turn"
    assert msg.model == upstream
    assert msg.usage.output_tokens == 12
    assert msg.usage.input_tokens > 0
    with c.messages.stream(model=model, max_tokens=100, messages=USER) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == ANSWER
    assert final.content[0].text == ANSWER
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens > 0


@pytest.mark.parametrize("model", ["weather-claude", "weather"])
def test_tool_use_round_trip(gateway, model):
    c = aclient(gateway)
    first = c.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    with c.messages.stream(model=model, max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        streamed = s.get_final_message()
    streamed_call = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed_call.input == {"city": "Paris"}
    second = c.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]},
    ])
    assert second.stop_reason == "end_turn"
    assert second.content[0].text.startswith("The tide")


def test_tool_runner_threads_fall_back_to_full_history(gateway):
    """`tool_runner()` threads by default; an OpenAI-wire route refuses `thread` with the
    details the SDK recovers from, and the loop completes unthreaded."""
    ran = []

    @anthropic.beta_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        ran.append(city)
        return "sunny, 21C"

    c = aclient(gateway)
    final = c.beta.messages.tool_runner(model="weather", max_tokens=100, system="You are a weather bot.",
                                        tools=[get_weather], messages=[{"role": "user", "content": "Weather in Paris?"}]
                                        ).until_done()
    assert ran == ["Paris"]
    assert final.stop_reason == "end_turn"
    assert final.content[0].text.startswith("The tide")


def test_messages_errors_are_anthropic_errors(gateway):
    c = aclient(gateway)
    with pytest.raises(anthropic.NotFoundError) as e:
        c.messages.create(model="no-such-model", max_tokens=10, messages=USER)
    assert e.value.body["error"]["message"].startswith("[model_not_found]")
    with pytest.raises(anthropic.InternalServerError) as e:
        aclient(gateway).with_options(max_retries=2).messages.create(model="down", max_tokens=10, messages=USER)
    assert e.value.status_code == 502


def test_models_in_anthropics_shape(gateway):
    """The Anthropic SDK's model objects (`ModelInfo`: type, display_name, created_at), not
    OpenAI's (helper-46: created_at and display_name came back None)."""
    c = aclient(gateway)
    models = list(c.models.list())
    assert "chat" in [m.id for m in models]
    for m in models:
        assert anthropic.types.ModelInfo.model_validate(m.model_dump()) == m
        assert m.type == "model" and m.display_name == m.id and m.lifecycle == "active"
        assert m.created_at.year >= 2026
    one = c.models.retrieve("claude-haiku-4-5")
    assert one.id == "claude-haiku-4-5" and one.created_at.isoformat()
    with pytest.raises(anthropic.NotFoundError):
        c.models.retrieve("no-such-model")


@pytest.fixture(scope="module")
def own_gateway():
    """A gateway of this module's own: the demo budget is spent here without touching the shared
    one's (the OpenAI SDK tests spend it too)."""
    yield from launch()


def test_budget_exhausted_raises_at_once(own_gateway):
    """A spent budget's 429 names the window's end as its Retry-After: too long to wait on, so it
    says `x-should-retry: false` unless that end is within a minute. This SDK obeys `true` and then
    sleeps the whole Retry-After (helper-46 saw a default client block for an hour)."""
    gateway = own_gateway
    probe = aclient(gateway).with_options(max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as e:
        for _ in range(40):
            probe.messages.create(model="budget", max_tokens=10, messages=USER)
    assert e.value.body["error"]["message"].startswith("[budget_exhausted]")
    headers = e.value.response.headers
    if int(headers["retry-after"]) > 60:
        assert headers["x-should-retry"] == "false"
        t0 = time.monotonic()
        with pytest.raises(anthropic.RateLimitError):
            aclient(gateway).messages.create(model="budget", max_tokens=10, messages=USER)
        assert time.monotonic() - t0 < 5
    else:
        assert headers["x-should-retry"] == "true"


def test_openai_sdk_served_by_anthropic_upstream(gateway):
    c = openai.OpenAI(base_url=gateway.base + "/v1", api_key="x")
    resp = c.chat.completions.create(model="claude-haiku-4-5", messages=USER)
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 12
    chunks = list(c.chat.completions.create(model="claude-haiku-4-5", messages=USER, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ANSWER
    assert chunks[-1].usage.completion_tokens == 12


def test_openai_sdk_streamed_tool_calls_from_anthropic_upstream(gateway):
    c = openai.OpenAI(base_url=gateway.base + "/v1", api_key="x")
    with c.chat.completions.stream(model="weather-claude", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                   tools=OPENAI_TOOLS) as s:
        final = s.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_messages_clamped_and_idempotent(gateway):
    c = aclient(gateway)
    msg = c.messages.create(model="capped", max_tokens=100, messages=USER)
    assert msg.stop_reason == "max_tokens"
    assert msg.usage.output_tokens == 5
    key = {"Idempotency-Key": "anthropic-job-1"}
    first = c.messages.with_raw_response.create(model="echo", max_tokens=50, messages=USER, extra_headers=key)
    again = c.messages.with_raw_response.create(model="echo", max_tokens=50, messages=USER, extra_headers=key)
    assert again.headers["x-tidegate-idempotent-replay"] == "true"
    assert again.parse().id == first.parse().id
