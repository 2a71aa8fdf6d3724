"""Hostile input through the public API, the middleware, plan files and the LiteLLM callback.

Hypothesis generates tenant ids, feature and model names (huge, unicode, control and format
characters, hash-tag braces, ``:``, ``%``), money (strings, floats, NaN, infinities, bools,
absurd sizes), raw header bytes and plan files. Whatever comes in: no crash (only the
documented ``TokenFenceError`` subclasses), no 500 from the middleware, no two ids sharing a
budget, and every refusal a clear 4xx with a JSON body. ``HOSTILE_EXAMPLES`` examples per test
(10,000 with ``HYPOTHESIS_PROFILE=ci``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.conftest import HOSTILE_EXAMPLES, ClusterNodes
from tokenfence_asgi.config import Limit, Plan, load_plans
from tokenfence_asgi.context import current_context
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import (
    ConfigError,
    InvalidAmount,
    InvalidId,
    Refused,
    TokenFenceError,
)
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.web.middleware import TokenFenceMiddleware
from tokenfence_asgi.web.problem import http_status

BIG = Plan("big", [Limit("1mo", max_cost="4000000")])
HOSTILE = settings(
    max_examples=HOSTILE_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# The costlier tests run a share: 2,000 plan files and 500 cluster / callback examples in CI.
PLAN_FILES = settings(HOSTILE, max_examples=max(100, HOSTILE_EXAMPLES // 5))
FEWER = settings(HOSTILE, max_examples=max(50, HOSTILE_EXAMPLES // 20))

TRICKY = "{}:%.~-_ aA\\/😀é\u0301租"
# Ids the engine must accept, however odd: braces, colons, percent signs, any printable unicode.
PRINTABLE = st.characters(exclude_categories=("C",))
GOOD_IDS = st.one_of(
    st.text(PRINTABLE, min_size=1, max_size=16),
    st.text(alphabet=TRICKY, min_size=1, max_size=12),
    # long ones, built cheaply: 190-200 characters
    st.tuples(st.integers(95, 100), st.text(PRINTABLE, min_size=2, max_size=2)).map(
        lambda t: t[1] * t[0]
    ),
    st.sampled_from(["{", "}", "{}", "{x}", "a{b}c", "}{", "t.x}:s", "%7B", "a:b", "k:", " "]),
)
# Ids it must refuse: empty, too long, control / format / surrogate / private-use characters.
BAD_IDS = st.one_of(
    st.just(""),
    st.integers(201, 100_000).map(lambda n: "x" * n),
    st.tuples(st.text(max_size=10), st.characters(categories=("Cc", "Cf", "Co", "Cn"))).map(
        "".join
    ),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF).map(lambda c: "a" + c),
    st.text(max_size=16),  # anything at all
)
IDS = st.one_of(GOOD_IDS, GOOD_IDS, BAD_IDS)
GOOD_MONEY = st.one_of(
    st.decimals(min_value=0, max_value=100, places=9),
    st.decimals(min_value=0, max_value=100, places=12).map(str),  # rounded to nano-dollars
    st.integers(0, 100),
    st.floats(0, 100),
)
BAD_MONEY = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True, places=None).map(str),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.sampled_from(
        [
            "-0.01",
            "1e3",
            "1E-10",
            " 1",
            "1 ",
            "0x10",
            "1_000",
            "١٢",
            "",
            "½",
            "1e400",
            "NaN",
            "-inf",
            True,
            False,
            None,
            b"1",
            [1],
            10**7,
        ]
    ),
)
MONEY = st.one_of(GOOD_MONEY, GOOD_MONEY, BAD_MONEY)


def exact_nanos(dollars: Decimal) -> int:
    """Nano-dollars of a store total (which may exceed what one call may charge)."""
    return int(dollars.scaleb(9))


def valid_id(value: object) -> bool:
    """The documented rule (keys.validate_id), restated: 1-200 characters, none of category C."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 200
        and not any(unicodedata.category(c).startswith("C") for c in value)
    )


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def shared_fence(redis_url: str, runner: asyncio.Runner) -> Iterator[tuple[TokenFence, str]]:
    """One fence on the shared Redis for every example of the module (its own prefix)."""
    import uuid

    prefix = f"tfh{uuid.uuid4().hex[:10]}"
    fence = TokenFence(
        redis_url=redis_url, prefix=prefix, plans=[BIG], default_plan="big", timeout_s=5
    )
    try:
        yield fence, prefix
    finally:
        runner.run(fence.aclose())
        from tests.reliability.servers import drop_prefix

        drop_prefix(redis_url, prefix)


def test_hostile_ids_and_money_through_the_engine(
    shared_fence: tuple[TokenFence, str], runner: asyncio.Runner
) -> None:
    fence, _ = shared_fence
    charged: dict[str, int] = {}  # tenant -> nanos: what the API says it charged

    @HOSTILE
    @given(
        tenants=st.lists(IDS, min_size=1, max_size=2, unique=True),
        feature=st.none() | IDS,
        model=st.none() | IDS,
        used_model=st.none() | IDS,
        amount=st.one_of(st.just("0.01"), MONEY),
        cost=MONEY,
        request_id=st.none() | IDS,
    )
    def example(
        tenants: list[str],
        feature: str | None,
        model: str | None,
        used_model: str | None,
        amount: Any,
        cost: Any,
        request_id: str | None,
    ) -> None:
        async def run() -> None:
            for tenant in tenants:
                try:
                    r = await fence.reserve(tenant, amount, feature=feature, model=model)
                except InvalidId as exc:
                    ok = valid_id(tenant) and (feature is None or valid_id(feature))
                    assert not ok, exc  # noqa: PT017
                    event("reserve: invalid id")
                    continue
                except InvalidAmount:
                    event("reserve: invalid amount")
                    continue
                except Refused:
                    event("reserve: refused")
                    continue  # an absurd estimate over the budget: 402, documented
                assert valid_id(tenant)
                try:
                    s = await fence.commit(r, cost, model=used_model, request_id=request_id)
                except (InvalidAmount, InvalidId) as exc:
                    event(f"commit: {type(exc).__name__}")
                    assert (await fence.release(r)).duplicate is False
                    continue
                event("committed")
                charged[tenant] = charged.get(tenant, 0) + to_nanos(s.cost)
                assert s.cost >= 0

        runner.run(run())

    example()

    async def check() -> None:  # no two tenants share a budget, nothing is counted twice
        for tenant, nanos in charged.items():
            status = await fence.status(tenant)
            assert (exact_nanos(status.windows[0].used), status.held) == (nanos, 0), tenant
        ledger: dict[str, int] = {}  # and the ledger reads back, every record its tenant's
        async for record in fence.usage_records():
            ledger[record.tenant_id] = ledger.get(record.tenant_id, 0) + record.cost_nanos
        assert {t: n for t, n in ledger.items() if t in charged} == charged

    runner.run(check())
    assert charged  # the strategies do produce valid calls


# -- the middleware, raw ASGI ----------------------------------------------------------------

HEADER_VALUES = st.one_of(
    st.binary(max_size=64),
    IDS.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(0, 70_000).map(lambda n: b"a" * n),
    st.sampled_from([b"", b" ", b"{x}", b"\xff\xfe", b"a\r\nx-tenant-id: victim", b"\x00"]),
)
HEADER_NAMES = st.sampled_from([b"x-tenant-id", b"x-request-id", b"x-other", b"X-Tenant-ID"])
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def _asgi(
    app: Any, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], dict(starts[0].get("headers", [])), body


def _expected_tenant(headers: list[tuple[bytes, bytes]]) -> tuple[int, str | None]:
    """What the middleware's documented rules make of the tenant header: (status, tenant)."""
    values = [v for k, v in headers if k == b"x-tenant-id"]
    if len(values) > 1:
        return 400, None
    if not values or not values[0]:
        return 401, None
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        return 400, None
    return (200, text) if valid_id(text) else (400, None)


def test_hostile_headers_through_the_middleware(
    shared_fence: tuple[TokenFence, str], runner: asyncio.Runner
) -> None:
    fence, _ = shared_fence

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        # Which budget a tenant id maps to is the engine test's; this one checks that the
        # middleware hands the app exactly the header's tenant, or refuses.
        ctx = current_context()
        assert ctx is not None
        assert ctx.tenant_id is not None
        body = json.dumps({"tenant": ctx.tenant_id}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    app = TokenFenceMiddleware(inner, fence=fence)

    @HOSTILE
    @given(headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4))
    def example(headers: list[tuple[bytes, bytes]]) -> None:
        headers = [(k.lower(), v) for k, v in headers]  # ASGI servers lower-case names
        status, response_headers, body = runner.run(_asgi(app, headers))
        expected, tenant = _expected_tenant(headers)
        assert status == expected, (status, body)
        event(f"status {status}")
        payload = json.loads(body)
        if status == 200:
            assert payload == {"tenant": tenant}  # exactly the header's tenant, nobody else's
        else:
            assert payload["error"] == {400: "invalid_tenant", 401: "tenant_required"}[status]
            assert isinstance(payload["message"], str)
        echoed = response_headers[b"x-request-id"].decode("ascii")
        assert REQUEST_ID.fullmatch(echoed)
        sent = [v for k, v in headers if k == b"x-request-id"]
        if sent and REQUEST_ID.fullmatch(sent[0].decode("latin-1")):
            assert echoed == sent[0].decode("ascii")

    example()


# -- plan files --------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if not isinstance(value, float) or value == value else "nan"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    return json.dumps(str(value))


WINDOWS = ["1d", "1h", "1m", "7d", "1mo", "30d", "1y", "0d", "-1d", "1 d", "1D"]
SCALARS = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.booleans(),
    IDS,
    st.sampled_from([*WINDOWS, "sliding", "calendar", "cap", "share", "-1", "0", "0.5", "1e400"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(IDS, inner, max_size=2),
    max_leaves=3,
)
PLAN_KEYS = st.sampled_from(
    [
        "models",
        "downgrade",
        "features",
        "feature_mode",
        "upgrade_url",
        "enforce",
        "max_input_chars",
        "max_input_tokens",
        "price_per_month",
        "policy",
        "bogus",
    ]
)
LIMIT = st.fixed_dictionaries(
    {"window": st.sampled_from(WINDOWS) | SCALARS},
    optional={
        "max_cost": GOOD_MONEY.map(str) | SCALARS,
        "max_requests": st.integers(-1, 10**6) | SCALARS,
        "kind": st.sampled_from(["calendar", "sliding", "bogus"]),
        "rollover": st.floats(-1, 2) | SCALARS,
        "x": SCALARS,
    },
)
VALID_FILE = """[plans.free]
limits = [{window = "1d", max_cost = "0.50"}, {window = "1m", max_requests = 10, kind = "sliding"}]
models = ["gpt-4o-mini"]
[plans."pro plan"]
limits = [{window = "1mo", max_cost = "100", rollover = 0.5}]
features = {chat = 0.5}
"""


@st.composite
def plan_files(draw: st.DrawFn) -> str:
    branch = draw(st.integers(0, 3))
    if branch == 0:
        return draw(st.text(max_size=200))  # anything at all
    if branch == 1:  # a valid file with one line replaced
        lines = VALID_FILE.splitlines()
        at = draw(st.integers(0, len(lines) - 1))
        lines[at] = draw(st.text(max_size=60))
        return "\n".join(lines)
    lines = []
    for name in draw(st.lists(IDS, min_size=1, max_size=2)):
        lines.append(f"[plans.{json.dumps(name)}]")
        lines.append(f"limits = {_toml_value(draw(st.lists(LIMIT, max_size=2)))}")
        for key in draw(st.lists(PLAN_KEYS, max_size=2, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(VALUES))}")
    return "\n".join(lines)


def test_hostile_plan_files_load_or_raise_config_error(
    shared_fence: tuple[TokenFence, str], redis_url: str, runner: asyncio.Runner
) -> None:
    """A plan file loads, or raises ConfigError naming the file; loaded plans run."""
    import redis.asyncio as aioredis

    _, prefix = shared_fence
    client = aioredis.Redis.from_url(redis_url)
    loaded = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plans.toml")

        @PLAN_FILES
        @given(text=plan_files(), tenant=GOOD_IDS, cost=MONEY)
        def example(text: str, tenant: str, cost: Any) -> None:
            nonlocal loaded
            with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(text)
            try:
                plans = load_plans(path)
            except ConfigError as exc:
                assert exc.message.startswith(path)  # noqa: PT017
                event("ConfigError")
                return
            event("loaded")
            loaded += 1
            assert plans
            assert all(isinstance(p, Plan) for p in plans)
            fence = TokenFence(redis=client, prefix=prefix, plans=plans, default_plan=plans[0].name)

            async def run() -> None:
                try:
                    r = await fence.reserve(tenant, "0.01")
                    await fence.commit(r, cost)
                except (Refused, InvalidAmount):
                    pass
                finally:
                    await fence.aclose()

            runner.run(run())

        try:
            example()
        finally:
            runner.run(client.aclose())
    assert loaded  # some files were valid, and their plans ran


# -- Redis Cluster: braces cannot leave the hash tag -----------------------------------------


def test_hostile_ids_on_redis_cluster_never_cross_slots(
    redis_cluster: ClusterNodes, runner: asyncio.Runner
) -> None:
    import uuid

    prefix = f"tfhc{uuid.uuid4().hex[:8]}"
    client = redis_cluster.client()
    fence = TokenFence(
        redis=client, prefix=prefix, plans=[BIG, Plan("pool", [])], default_plan="big"
    )
    charged: dict[str, int] = {}
    braces = st.text(alphabet="{}:.%ab", min_size=1, max_size=10)

    @FEWER
    @given(tenant=braces | IDS, feature=st.none() | braces, pool=st.none() | braces)
    def example(tenant: str, feature: str | None, pool: str | None) -> None:
        assume(valid_id(tenant))

        async def run() -> None:
            if pool is not None:
                await fence.set_pool(tenant, pool, plan="pool")
            r = await fence.reserve(tenant, "0.01", feature=feature)
            await fence.commit(r, "0.005")
            charged[tenant] = charged.get(tenant, 0) + 5_000_000
            status = await fence.status(tenant)
            assert to_nanos(status.windows[0].used) == charged[tenant]

        runner.run(run())

    try:
        example()
    finally:

        async def close() -> None:
            await fence.aclose()
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.delete(key)
            await client.aclose()

        runner.run(close())


# -- the LiteLLM callback: hostile metadata and model names ----------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_metadata_and_models_through_the_litellm_callback(
    shared_fence: tuple[TokenFence, str], runner: asyncio.Runner
) -> None:
    from litellm.types.utils import CallTypes

    from tokenfence_asgi.litellm import TokenFenceCallback

    fence, _ = shared_fence
    callback = TokenFenceCallback(fence)
    models = st.one_of(st.sampled_from(["gpt-4o-mini", "openai/gpt-4o", "gpt-4o-mini "]), IDS)
    outcomes: dict[str, int] = {}

    @FEWER
    @given(
        model=models,
        tenant=st.sampled_from(["acme", "t:{x}"])
        | st.none()
        | IDS
        | st.integers()
        | st.lists(st.integers(), max_size=2),
        feature=st.none() | IDS | st.integers(),
        content=st.text(max_size=300),
        max_tokens=st.none() | st.integers(-5, 10**7) | st.floats() | st.text(max_size=3),
    )
    def example(model: str, tenant: Any, feature: Any, content: str, max_tokens: Any) -> None:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "metadata": {"tenant_id": tenant, "feature": feature},
            "max_tokens": max_tokens,
        }

        async def run() -> None:
            try:
                changed = await callback.async_pre_call_deployment_hook(
                    kwargs, CallTypes.acompletion
                )
            except TokenFenceError as exc:  # the documented refusals (and ConfigError, unpriced)
                name = type(exc).__name__
                outcomes[name] = outcomes.get(name, 0) + 1
                event(name)
                assert isinstance(exc.to_dict()["message"], str)  # noqa: PT017
                return
            assert changed is not None
            outcomes["reserved"] = outcomes.get("reserved", 0) + 1
            assert valid_id(tenant)

        runner.run(run())

    try:
        example()
    finally:
        callback.close()
    assert outcomes.get("reserved", 0) > 0


def test_valid_id_restates_the_documented_rule() -> None:
    """``valid_id`` (the tests' oracle) on edge ids, and the engine agreeing with it."""
    from tokenfence_asgi.store.keys import validate_id

    for value, ok in [
        ("a", True),
        ("", False),
        ("x" * 200, True),
        ("x" * 201, False),
        ("a\u200bb", False),
        ("é", True),
        ("a\ud800", False),
    ]:
        assert valid_id(value) is ok
        if ok:
            assert validate_id(value) == value
        else:
            with pytest.raises(InvalidId):
                validate_id(value)


async def test_spend_past_the_counter_range_is_a_documented_error(
    make_fence: Any,
) -> None:
    """Commits are charged in full even above their holds, so a window can be driven past the
    range its counters keep exactly: ten $1M commits on $0.01 holds under a $4M limit."""
    fence = make_fence(plans=[Plan("b", [Limit("1mo", max_cost="4000000")])], default_plan="b")
    holds = [await fence.reserve("t", "0.01") for _ in range(10)]
    for hold in holds[:9]:
        await fence.commit(hold, "1000000")
    with pytest.raises(TokenFenceError) as refused:
        await fence.commit(holds[9], "1000000")
    assert http_status(refused.value) == 422
    assert "nothing was charged" in refused.value.message
