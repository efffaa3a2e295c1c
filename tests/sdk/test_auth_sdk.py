"""Client auth (`auth.keys`) as the official SDKs see it: the SDK's own `api_key` is the
tidegate key; a wrong one raises the SDK's AuthenticationError, a route the key may not use
too, and `models.list()` shows the key's routes only."""

import anthropic
import openai
import pytest

USER = [{"role": "user", "content": "Hello there"}]


def test_openai_sdk_with_a_listed_key(auth_gateway):
    client = openai.OpenAI(base_url=auth_gateway.base + "/v1", api_key="k-chat", max_retries=0)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["chat"]
    # A route this key may not use, by model name and by per-route base URL.
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="echo", messages=USER)
    assert "may not use the route" in str(e.value)
    per_route = openai.OpenAI(base_url=auth_gateway.base + "/r/echo/v1", api_key="k-chat", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        per_route.chat.completions.create(model="x", messages=USER)
    everything = openai.OpenAI(base_url=auth_gateway.base + "/v1", api_key="k-all", max_retries=0)
    assert everything.chat.completions.create(model="echo", messages=USER).choices[0].message.content
    assert "echo" in [m.id for m in everything.models.list()]


def test_wrong_keys_raise_authentication_error(auth_gateway):
    client = openai.OpenAI(base_url=auth_gateway.base + "/v1", api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert e.value.code == "unauthorized"
    aclient = anthropic.Anthropic(base_url=auth_gateway.base, api_key="wrong")
    with pytest.raises(anthropic.AuthenticationError) as e:
        aclient.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=USER)
    assert "[unauthorized]" in str(e.value)


def test_anthropic_sdk_with_a_listed_key(auth_gateway):
    client = anthropic.Anthropic(base_url=auth_gateway.base, api_key="k-all", max_retries=0)
    r = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=USER)
    assert r.content[0].text
    with anthropic.Anthropic(base_url=auth_gateway.base, api_key="k-chat", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=USER)
