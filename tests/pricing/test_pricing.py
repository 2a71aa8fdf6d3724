"""Prices, worst-case estimates and actual costs: the snapshot, overrides, no free models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import ConfigError, ModelNotPriced
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.pricing.call import CallShape
from tokenfence_asgi.web.middleware import TokenFenceMiddleware
from tokenfence_asgi.web.problem import http_status

MSGS = [{"role": "user", "content": "How many tokens is this prompt?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its id and return its status. " * 20,
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


def test_snapshot_price_is_litellms_bundled_price_too(book: PriceBook) -> None:
    price = book.price("gpt-4o-mini")
    entry = litellm.model_cost["gpt-4o-mini"]
    assert price.input_per_token == Decimal(str(entry["input_cost_per_token"]))
    assert price.output_per_token == Decimal(str(entry["output_cost_per_token"]))
    assert price.max_output_tokens == entry["max_output_tokens"]
    assert book.price("openai/gpt-4o-mini") == price  # a provider prefix finds the same entry


def test_estimate_is_input_tokens_plus_allowance_rounded_up(book: PriceBook) -> None:
    est = book.estimate("gpt-4o-mini", MSGS, max_output_tokens=256)
    tokens = litellm.token_counter(model="gpt-4o-mini", messages=MSGS)
    assert (est.input_tokens, est.output_tokens, est.from_call) == (tokens, 256, True)
    exact = tokens * Decimal("1.5e-7") + 256 * Decimal("6e-7")
    assert est.amount_nanos == to_nanos(exact, rounding="up")


def test_tools_count_as_input(book: PriceBook) -> None:
    plain = book.estimate("gpt-4o-mini", MSGS, max_output_tokens=1)
    with_tools = book.estimate("gpt-4o-mini", MSGS, tools=TOOLS, max_output_tokens=1)
    assert with_tools.input_tokens > plain.input_tokens + 100


def test_allowance_call_then_default_then_model_maximum() -> None:
    assert PriceBook().estimate("gpt-4o-mini", MSGS).output_tokens == 16384
    assert not PriceBook().estimate("gpt-4o-mini", MSGS).from_call
    book = PriceBook(default_output_tokens=500)
    assert book.estimate("gpt-4o-mini", MSGS).output_tokens == 500
    assert book.estimate("gpt-4o-mini", MSGS, max_output_tokens=64).output_tokens == 64
    # never more than the model can produce
    assert book.estimate("gpt-4o-mini", MSGS, max_output_tokens=10**6).output_tokens == 16384


def test_unknown_model_is_never_free() -> None:
    with pytest.raises(ConfigError, match="no price for model 'acme-llm-7b'"):
        PriceBook().price("acme-llm-7b")
    fallback = ModelPrice.per_million("1", "2", max_output_tokens=1000)
    assert PriceBook(default_price=fallback).price("acme-llm-7b") is fallback


def test_override_wins_over_the_map_and_matches_without_prefix() -> None:
    negotiated = ModelPrice.per_million("2", "8")
    book = PriceBook({"gpt-4o": negotiated})
    assert book.price("gpt-4o") is negotiated
    assert book.price("openai/gpt-4o") is negotiated
    assert negotiated.input_per_token == Decimal("0.000002")
    # its maximum output still comes from the snapshot
    assert (
        book.estimate("gpt-4o", MSGS).output_tokens
        == litellm.model_cost["gpt-4o"]["max_output_tokens"]
    )


def test_self_hosted_model_without_maximum_needs_an_allowance() -> None:
    book = PriceBook({"my-llama": ModelPrice("0.0000001", "0.0000002")})
    with pytest.raises(ConfigError, match="no output allowance for model 'my-llama'"):
        book.estimate("my-llama", MSGS)
    assert book.estimate("my-llama", MSGS, max_output_tokens=100).output_tokens == 100


def test_a_trusted_deployment_price_comes_after_the_configured_ones() -> None:
    deployment = ModelPrice("0.000001", "0.000002")
    book = PriceBook({"gpt-4o": ModelPrice.per_million("2", "8")})
    assert book.price("acme-llm-7b", deployment) is deployment  # before the map and default
    assert book.price("gpt-4o", deployment) == ModelPrice.per_million("2", "8")


def test_per_call_and_per_character_prices() -> None:
    image = ModelPrice.flat("0.04")
    assert image.cost(0, 0, units=3) == Decimal("0.12")
    speech = PriceBook().price("tts-1")  # $15 per million characters
    assert speech.per_character == Decimal("0.000015")
    assert speech.cost(0, 0, characters=1000) == Decimal("0.015")


def test_actual_cost_prefers_override_then_litellms_cost() -> None:
    book = PriceBook({"gpt-4o": ModelPrice.per_million("2", "8")})
    assert book.actual_cost(
        "gpt-4o", response_cost=0.5, input_tokens=1000, output_tokens=100
    ) == Decimal("0.0028")
    assert book.actual_cost(
        "gpt-4o-mini", response_cost=0.00026999999999999995, input_tokens=0, output_tokens=0
    ) == Decimal("0.00026999999999999995")
    # no cost from LiteLLM: the map price times the usage
    assert book.actual_cost(
        "gpt-4o-mini", response_cost=None, input_tokens=1000, output_tokens=200
    ) == Decimal("0.00027")
    assert book.actual_cost("acme", response_cost=None, input_tokens=1, output_tokens=1) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "must be in"),
        ("abc", "must be a number"),
        (float("nan"), "must be in"),
        (True, "got True"),
    ],
)
def test_bad_prices_are_refused(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelPrice(value, 0)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="default_output_tokens"):
        PriceBook(default_output_tokens=0)
    with pytest.raises(ConfigError, match="must be a ModelPrice"):
        PriceBook({"x": (1, 2)})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="max_output_tokens"):
        ModelPrice(0, 0, max_output_tokens=-5)


def test_text_tokens_counts_what_a_stream_produced(book: PriceBook) -> None:
    assert book.text_tokens("gpt-4o-mini", "") == 0
    assert 3 <= book.text_tokens("gpt-4o-mini", "Hello from the fake provider.") <= 10


async def test_the_fence_has_one_price_book_the_callback_shares(
    make_fence: Callable[..., TokenFence],
) -> None:
    negotiated = ModelPrice.per_million("2", "8")
    fence = make_fence(prices={"gpt-4o": negotiated}, default_price=ModelPrice.flat("1"))
    assert fence.prices.price("gpt-4o") is negotiated
    assert fence.prices.price("acme-llm-7b") == ModelPrice.flat("1")
    from tokenfence_asgi.litellm import TokenFenceCallback

    callback = TokenFenceCallback(fence)
    try:
        assert callback.prices is fence.prices
    finally:
        callback.close()


# -- the snapshot ------------------------------------------------------------------------------


def per_million(value: Decimal | None) -> Decimal | None:
    return None if value is None else (value * 1_000_000).normalize()


@pytest.mark.parametrize(
    ("model", "input", "output", "max_output", "window"),
    [
        ("gpt-4o", "2.5", "10", 16_384, 128_000),
        ("gpt-4o-2024-08-06", "2.5", "10", 16_384, 128_000),  # a dated name finds its family
        ("openai/gpt-4o-mini", "0.15", "0.6", 16_384, 128_000),
        ("azure/gpt-4o", "2.5", "10", 16_384, 128_000),
        ("o1-mini", "1.1", "4.4", 65_536, 128_000),  # LiteLLM 1.110.2 dropped it
        ("gpt-5.2-20251211", "1.75", "14", 128_000, 400_000),  # compact date, as LiteLLM logs it
        ("text-embedding-3-small", "0.02", "0", None, 8_192),
        ("claude-3-5-haiku-20241022", "0.8", "4", 8_192, 200_000),  # LiteLLM's map lacks it
        ("anthropic/claude-opus-4-1", "15", "75", 32_000, 200_000),  # LiteLLM prices it at $0
        ("claude-sonnet-4-5", "3", "15", 64_000, 200_000),
    ],
)
def test_snapshot_prices(
    book: PriceBook, model: str, input: str, output: str, max_output: int | None, window: int
) -> None:
    """Prices as the providers' pages list them (per million tokens)."""
    price = book.price(model)
    assert per_million(price.input_per_token) == Decimal(input)
    assert per_million(price.output_per_token) == Decimal(output)
    assert (price.max_output_tokens, price.max_input_tokens) == (max_output, window)


def test_snapshot_agrees_with_litellms_map_where_both_price() -> None:
    """Every OpenAI and Anthropic model both price: the same input and output price."""
    from tokenfence_asgi.pricing._prices import snapshot
    from tokenfence_asgi.pricing._prices.model_price import snapshot_price

    compared, differ = 0, []
    for key, entry in litellm.model_cost.items():
        if not isinstance(entry, dict) or entry.get("litellm_provider") not in (
            "openai",
            "anthropic",
        ):
            continue
        if entry.get("mode") not in ("chat", "responses", "embedding"):
            continue
        found = snapshot.find(key)
        price = None if found is None else snapshot_price(found)
        if price is None or entry.get("input_cost_per_token") is None:
            continue
        compared += 1
        for field, ours in (
            ("input_cost_per_token", price.input_per_token),
            ("output_cost_per_token", price.output_per_token),
        ):
            if Decimal(str(entry.get(field) or 0)) != ours:
                differ.append((key, field))
    assert compared >= 100
    assert differ == []


def test_the_snapshot_is_what_the_generator_makes() -> None:
    """scripts/update_prices.py regenerates prices.json byte for byte (pinned versions)."""
    pytest.importorskip("genai_prices", reason="the dev extras install genai-prices")
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "scripts/update_prices.py", "--check"],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_regional_and_other_providers_names_are_not_in_the_snapshot() -> None:
    from tokenfence_asgi.pricing._prices import snapshot

    assert snapshot.find("azure/us/o4-mini") is None  # Data Zone prices are ~10% higher
    assert snapshot.find("bedrock/anthropic.claude-3-haiku") is None
    assert snapshot.find("azure/my-deployment") is None
    assert snapshot.find("claude-3-haiku-20240307") is not None
    assert snapshot.find("whisper-1") is not None
    assert PriceBook(default_price=ModelPrice.flat("1")).price("whisper-1") == ModelPrice.flat(
        "1"
    )  # priced per audio hour only: nothing to bound it by


def test_long_context_tier_prices_every_token() -> None:
    """Above 200k input tokens, claude-sonnet-4-5 bills every token at $6 / $22.50 per M."""
    book = PriceBook()
    shape = CallShape("chat", messages=tuple(MSGS), output_limit=1000)
    below = book.bound("claude-sonnet-4-5", shape, input_tokens=200_000)
    above = book.bound("claude-sonnet-4-5", shape, input_tokens=250_000)
    assert below.amount_nanos == to_nanos(200_000 * Decimal("3e-6") + 1000 * Decimal("15e-6"))
    assert above.amount_nanos == to_nanos(250_000 * Decimal("6e-6") + 1000 * Decimal("22.5e-6"))
    price = book.price("claude-sonnet-4-5")
    assert price.cost(250_000, 1000) == Decimal("1.5225")  # genai-prices' figure
    assert price.cost(100_000, 0, cache_read_tokens=150_000) == Decimal("0.69")


def test_a_call_that_writes_the_cache_is_bounded_at_the_cache_write_price() -> None:
    book = PriceBook()
    cached = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
        }
    ]
    plain = book.estimate(
        "claude-sonnet-4-5", [{"role": "user", "content": "hi"}], max_output_tokens=1
    )
    marked = book.estimate("claude-sonnet-4-5", cached, max_output_tokens=1)
    assert plain.input_tokens == marked.input_tokens
    # an hour-long cache write costs 2x the input price ($6 per M)
    assert marked.amount_nanos == to_nanos(
        marked.input_tokens * Decimal("6e-6") + Decimal("15e-6"), rounding="up"
    )
    assert plain.amount_nanos == to_nanos(
        plain.input_tokens * Decimal("3e-6") + Decimal("15e-6"), rounding="up"
    )


def test_actual_cost_counts_cached_tokens_at_their_price() -> None:
    book = PriceBook()
    cost = book.actual_cost(
        "claude-sonnet-4-5",
        response_cost=None,
        input_tokens=1000,
        output_tokens=100,
        cache_read_tokens=10_000,
        cache_write_tokens=2000,
    )
    expected = 1000 * 3 + 100 * 15 + 10_000 * Decimal("0.3") + 2000 * Decimal("3.75")
    assert cost == expected / 1_000_000


# -- model names and ModelNotPriced ------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["gpt-4o ", " gpt-4o", "gpt-4o\n", "gpt-4o\t", "gpt\x00-4o", "gpt-4o\u200b", ""]
)
def test_a_malformed_model_name_is_refused_not_stripped(model: str) -> None:
    book = PriceBook(default_price=ModelPrice.flat("1"))  # even with a price for anything
    with pytest.raises(ModelNotPriced) as caught:
        book.price(model)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert error.models == (model,)
    assert error.to_dict()["error"] == "ai_model_not_priced"
    assert http_status(error) == 422
    with pytest.raises(ModelNotPriced):
        book.estimate(model, MSGS, max_output_tokens=10)
    with pytest.raises(ConfigError, match="prices: model name"):
        PriceBook({model or " ": ModelPrice.flat("1")})


def test_an_unpriced_model_names_itself() -> None:
    with pytest.raises(ModelNotPriced, match="no price for model 'acme-llm-7b'") as caught:
        PriceBook().estimate("acme-llm-7b", MSGS)
    assert caught.value.models == ("acme-llm-7b",)
    assert caught.value.to_dict() == {
        "error": "ai_model_not_priced",
        "message": caught.value.message,
        "models": ["acme-llm-7b"],
    }


def test_check_lists_every_model_nothing_prices() -> None:
    book = PriceBook({"my-llama": ModelPrice.per_million("0.1", "0.2")})
    found = book.check(["gpt-4o", "my-llama", "claude-3-haiku-20240307"])
    assert found["my-llama"] == ModelPrice.per_million("0.1", "0.2")
    assert per_million(found["gpt-4o"].input_per_token) == Decimal("2.5")
    with pytest.raises(ModelNotPriced, match="2 of 4 models cannot be priced") as caught:
        book.check(["gpt-4o", "acme-llm-7b", "gpt-4o ", "my-llama"])
    assert caught.value.models == ("acme-llm-7b", "gpt-4o ")
    assert "acme-llm-7b" in caught.value.message
    assert "'gpt-4o '" in caught.value.message
    assert book.check("gpt-4o").keys() == {"gpt-4o"}  # one name, not its letters


async def test_the_middleware_answers_an_unpriced_model_with_a_json_422(
    make_fence: Callable[..., TokenFence],
) -> None:
    fence = make_fence()

    async def chat(request: Request) -> Response:
        estimate = fence.prices.estimate(request.query_params["model"], MSGS)
        return JSONResponse({"nanos": estimate.amount_nanos})

    app = Starlette(routes=[Route("/chat", chat)])
    app.add_middleware(TokenFenceMiddleware, fence=fence)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        headers = {"X-Tenant-ID": "acme"}
        ok = await client.get("/chat", params={"model": "gpt-4o"}, headers=headers)
        spaced = await client.get("/chat", params={"model": "gpt-4o "}, headers=headers)
        unknown = await client.get("/chat", params={"model": "acme-llm-7b"}, headers=headers)
    assert ok.status_code == 200
    for response, model in ((spaced, "gpt-4o "), (unknown, "acme-llm-7b")):
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert (body["error"], body["models"]) == ("ai_model_not_priced", [model])


# -- no LiteLLM import, prices that do not move ------------------------------------------------


def run_python(code: str, *, local_map: bool = True) -> str:
    """Run ``code`` in a fresh interpreter; ``local_map=False`` drops the variable that keeps
    LiteLLM offline (the price book must not need it)."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    if not local_map:
        env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def test_pricing_and_counting_never_import_litellm() -> None:
    out = run_python(
        "import sys, time\n"
        "import tokenfence_asgi\n"
        "from tokenfence_asgi import PriceBook\n"
        "msgs = [{'role': 'user', 'content': 'Hello!'}]\n"
        "start = time.perf_counter()\n"
        "e = PriceBook().estimate('gpt-4o', msgs)\n"
        "first = time.perf_counter() - start\n"
        "PriceBook().estimate('claude-sonnet-4-5', msgs, max_output_tokens=100)\n"
        "print(e.input_tokens, e.output_tokens, 'litellm' in sys.modules,\n"
        "      any(m.startswith('litellm') for m in sys.modules))\n"
        "print(f'first estimate {first * 1000:.0f} ms', file=sys.stderr)\n",
        local_map=False,
    )
    assert out.split() == ["9", "16384", "False", "False"]


def test_litellms_map_prices_only_once_imported_and_prices_never_move() -> None:
    out = run_python(
        "from tokenfence_asgi import ModelPrice, ModelNotPriced, PriceBook\n"
        "fallback = ModelPrice.per_million('9', '9')\n"
        "plain, defaulted = PriceBook(), PriceBook(default_price=fallback)\n"
        "name = 'cerebras/llama-3.1-8b'\n"
        "try:\n"
        "    plain.price(name)\n"
        "except ModelNotPriced:\n"
        "    print('refused')\n"
        "print(defaulted.price(name) is fallback)\n"
        "import litellm\n"
        "print(plain.price(name).input_per_token > 0, defaulted.price(name) is fallback)\n"
        "print(PriceBook(default_price=fallback).price(name) is fallback)\n"
    )
    assert out.split() == ["refused", "True", "True", "True", "False"]


def test_audio_models_are_held_at_their_audio_prices() -> None:
    """gpt-audio: $32 per million audio input tokens, $64 per million audio output tokens."""
    book = PriceBook()
    text = book.estimate("gpt-audio", [{"role": "user", "content": "hi"}], max_output_tokens=10)
    assert text.amount_nanos == to_nanos(
        text.input_tokens * Decimal("2.5e-6") + 10 * Decimal("64e-6"), rounding="up"
    )
    clip = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    audio = book.estimate("gpt-audio", [{"role": "user", "content": [clip]}], max_output_tokens=10)
    assert audio.input_tokens >= 128_000  # an audio part: the context window
    assert audio.amount_nanos == to_nanos(
        audio.input_tokens * Decimal("32e-6") + 10 * Decimal("64e-6"), rounding="up"
    )


@pytest.mark.slow
# LiteLLM's own use of pydantic warns; nothing to do with this project.
@pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* using the `ReadOnly` qualifier:UserWarning",
    "ignore:Accessing the 'model_(computed_)?fields' attribute on the inst:DeprecationWarning",
)
async def test_a_litellm_call_to_an_unpriced_model_is_a_json_422_and_never_sent(
    make_fence: Callable[..., TokenFence],
) -> None:
    from tests.e2e.fake_provider import FakeProvider, serve
    from tests.litellm.litellm_support import close_litellm_clients, saved_callbacks
    from tokenfence_asgi.litellm import TokenFenceCallback

    provider = FakeProvider()
    fence = make_fence(default_plan="enterprise")  # every model allowed
    callback = TokenFenceCallback(fence)
    with saved_callbacks(), serve(provider.app()) as url:
        litellm.callbacks = [callback]
        try:

            async def chat(request: Request) -> Response:
                await litellm.acompletion(
                    model=request.query_params["model"],
                    messages=MSGS,
                    max_tokens=50,
                    api_base=f"{url}/v1",
                    api_key="sk-fake",
                )
                return JSONResponse({"ok": True})

            app = Starlette(routes=[Route("/chat", chat)])
            app.add_middleware(TokenFenceMiddleware, fence=fence)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                answers = {
                    model: await client.get(
                        "/chat", params={"model": model}, headers={"X-Tenant-ID": "acme"}
                    )
                    for model in ("gpt-4o-mini", "gpt-4o ", "openai/gpt-4o\t", "acme-llm-7b")
                }
        finally:
            callback.close()
            await close_litellm_clients()
    assert answers.pop("gpt-4o-mini").status_code == 200
    for model, response in answers.items():
        assert response.status_code == 422
        assert response.json()["error"] == "ai_model_not_priced"
        assert response.json()["models"] == [model]
    assert provider.calls == 1  # only the priced call was sent


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input": "Go on.", "previous_response_id": "resp_123"},
        {"input": "Go on.", "conversation": "conv_123"},
        {"input": "Go on.", "conversation": {"id": "conv_123"}},
        {"input": "Go on.", "prompt": {"id": "pmpt_123", "variables": {"city": "Paris"}}},
        {"input": [{"type": "item_reference", "id": "msg_123"}]},
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Summarise this."},
                        {"type": "input_file", "file_id": "file-123"},
                    ],
                }
            ]
        },
    ],
    ids=["previous_response", "conversation_id", "conversation", "prompt", "item", "file"],
)
def test_responses_input_named_by_reference_is_held_at_the_context_window(
    kwargs: dict[str, object],
) -> None:
    """Input the request only names (an earlier response, a conversation, a stored prompt, an
    item or a file uploaded before) is billed as input tokens; the hold cannot count them, so it
    takes the most the model accepts: its context window."""
    from tokenfence_asgi.calls.shapes import shape_of

    book = PriceBook()
    window = book.max_input_tokens("gpt-4.1-mini")
    assert window is not None
    assert window > 100_000
    plain = book.bound("gpt-4.1-mini", shape_of("responses", {"input": "Go on."}), allowance=10)
    named = book.bound("gpt-4.1-mini", shape_of("responses", kwargs), allowance=10)
    assert plain.input_tokens < 100
    assert named.input_tokens >= window
    assert named.amount_nanos >= to_nanos(window * Decimal("0.4e-6"), rounding="up")


def test_a_predicted_output_is_held_as_output_it_may_be_billed_for() -> None:
    """Predicted Outputs: the prediction's tokens the model rejects are billed as completion
    tokens beyond the output limit, so the hold counts them as output at the output price."""
    from tokenfence_asgi.calls.shapes import shape_of

    book = PriceBook()
    code = "def add(a, b):\n    return a + b\n" * 200
    messages = [{"role": "user", "content": "Rename add to plus."}]
    plain = book.bound("gpt-4o", shape_of("chat", {"messages": messages, "max_tokens": 100}))
    for prediction in (
        {"type": "content", "content": code},
        {"type": "content", "content": [{"type": "text", "text": code}]},
    ):
        kwargs = {"messages": messages, "max_tokens": 100, "prediction": prediction}
        predicted = book.bound("gpt-4o", shape_of("chat", kwargs))
        tokens = book.text_tokens("gpt-4o", code)
        assert tokens > 1000
        extra = predicted.amount_nanos - plain.amount_nanos
        assert extra >= to_nanos(tokens * Decimal("10e-6")) - 1  # gpt-4o output: $10 / M


def test_a_call_on_the_1m_context_beta_is_bounded_by_that_window() -> None:
    """Anthropic's ``context-1m`` beta takes claude-sonnet-4-5's input past its listed 200k
    window: a document part (whose size the hold cannot count) is held at 1M tokens, at the
    long-context price, when the call asks for the beta (``extra_headers``, as LiteLLM passes
    it)."""
    from tokenfence_asgi.calls.shapes import shape_of

    book = PriceBook()
    pdf = {"type": "document", "source": {"type": "file", "file_id": "file_123"}}
    body = {"messages": [{"role": "user", "content": [pdf]}], "max_tokens": 10}
    listed = book.bound("claude-sonnet-4-5", shape_of("chat", body))
    assert listed.input_tokens == 200_000
    for headers in (
        {"anthropic-beta": "context-1m-2025-08-07"},
        {"Anthropic-Beta": "x,context-1m-2025-08-07"},
    ):
        beta = book.bound("claude-sonnet-4-5", shape_of("chat", {**body, "extra_headers": headers}))
        assert beta.input_tokens == 1_000_000
        assert beta.amount_nanos >= to_nanos(1_000_000 * Decimal("6e-6"))  # $6/M past 200k
