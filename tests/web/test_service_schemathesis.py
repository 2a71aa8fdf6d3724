"""schemathesis against the published OpenAPI schema of the reserve / commit API.

The app runs in a real uvicorn server (a thread, loopback) on real Redis; the schema is loaded
from its ``GET /openapi.json``. Every operation gets generated requests that follow the schema
(positive) and that break it (negative): more than 1,000 in all, none may be answered with a
5xx, every answer must be documented (status, content type, body schema), and every request the
schema forbids must be refused with a 4xx. Half of the positive commits and releases carry a real
reservation token, so the success paths are checked against the schema too.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.servers import serve
from tokenfence_asgi.config import Limit, Plan
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.web.service import service_app

pytestmark = pytest.mark.slow

TOKEN = "schemathesis-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN = Plan(
    "fuzz",
    [Limit("1d", max_cost="2.00", max_requests=5000)],
    models=["gpt-*", "m*"],
    downgrade={"gpt-4o": "gpt-4o-mini"},
    max_input_chars=100_000,
    max_input_tokens=1_000_000,
)
PRICES = PriceBook(
    {
        "gpt-4o": ModelPrice.per_million("2.50", "10", max_output_tokens=16_384),
        "gpt-4o-mini": ModelPrice.per_million("0.15", "0.60", max_output_tokens=16_384),
    },
    default_price=ModelPrice.per_million("1", "4", max_output_tokens=4096),
)
EXAMPLES = 130  # per operation and mode: 4 operations x 2 modes = 1,040 requests
# A request the schema forbids must be refused: 413 (a body above the limit, which the schema's
# string lengths allow to be generated) is a refusal too.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": ["400", "401", "404", "405", "409", "413", "415", "422"]
            }
        }
    }
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def server(redis_url: str, prefix: str) -> Iterator[str]:
    fence = TokenFence(redis_url=redis_url, prefix=prefix, plans=[PLAN], default_plan="fuzz")
    app = service_app(fence, token=TOKEN, prices=PRICES, owns_fence=True, preload_prices=True)
    try:
        with serve(app, lifespan="on") as url:
            yield url
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


def _real_tokens(session: requests.Session, url: str, count: int) -> list[str]:
    tokens = []
    for i in range(count):
        r = session.post(
            f"{url}/reserve",
            json={"tenant": f"fuzz-{i % 3}", "candidates": [{"model": "m", "estimate": "0.001"}]},
        )
        assert r.status_code == 200, r.text
        tokens.append(r.json()["id"])
    return tokens


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    url: str,
    session: requests.Session,
    tokens: Iterator[str],
    statuses: Counter[int],
    by_operation: Counter[str],
) -> None:
    """Send EXAMPLES generated requests of one operation and mode; check every answer."""
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    real = mode is GenerationMode.POSITIVE and operation.path in ("/commit", "/release")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), swap=st.booleans())
    def run(case: Any, swap: bool) -> None:
        if real and swap and isinstance(case.body, dict):
            case.body["id"] = next(tokens)
        response = case.call(base_url=url, session=session)
        statuses[response.status_code] += 1
        by_operation[f"{case.method} {case.operation.path}"] += 1
        case.validate_response(response, checks=checks)

    run()


def test_no_server_error_in_over_1000_generated_requests(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", config=CONFIG)
    statuses: Counter[int] = Counter()
    by_operation: Counter[str] = Counter()
    with requests.Session() as session:
        session.headers.update(AUTH)
        tokens = itertools.cycle(_real_tokens(session, server, 60))
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if operation.path == "/openapi.json" and mode is GenerationMode.NEGATIVE:
                    continue  # nothing to break: no parameters, no body
                _fuzz(operation, mode, server, session, tokens, statuses, by_operation)
    total = sum(statuses.values())
    print(f"{total} requests: {dict(statuses)}; {dict(by_operation)}")
    assert total >= 1000, (total, statuses)
    assert not [code for code in statuses if code >= 500], statuses
    # the success paths and the refusals were reached, not only the 4xx of bad input
    assert statuses[200] > 100, statuses
    assert statuses[422] > 100, statuses
    assert set(by_operation) == {
        "POST /reserve",
        "POST /commit",
        "POST /release",
        "GET /status/{tenant}",
    }, by_operation
