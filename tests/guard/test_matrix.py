"""Every guarded client x every paid call, over real HTTP with the real SDKs, on both stores.

For each client kind (``AsyncOpenAI``, ``OpenAI``, ``AsyncAzureOpenAI``, ``AzureOpenAI``,
``AsyncAnthropic``, ``Anthropic``) and each call of its SDK (``tests.guard.calls``):

- refused when the tenant is killed, when the call does not fit the budget, and when the plan
  does not allow its model: our error, which is also the SDK's status error, raised before the
  provider hears of the call;
- charged the provider's usage at the model's list price (nothing left held);
- released when the provider fails (nothing charged, nothing held).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.fake_anthropic import FakeAnthropic
from tests.guard.calls import CASES, Case
from tests.guard.conftest import CLIENT_KINDS
from tests.guard.providers import GuardProvider
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.errors import BudgetExceeded, ModelNotAllowed, TenantDisabled

pytestmark = pytest.mark.slow

PAIRS = [
    pytest.param(kind, case, id=f"{kind}-{case.name}")
    for kind in CLIENT_KINDS
    for case in CASES
    if (case.sdk == "anthropic") == ("Anthropic" in kind)
]


def sdk_of(case: Case) -> Any:
    return anthropic if case.sdk == "anthropic" else openai


async def spent(fence: TokenFence, tenant: str = "acme") -> tuple[Decimal, Decimal]:
    """What the tenant was charged today, and what is held."""
    window = (await fence.status(tenant)).windows[0]
    return window.used, window.held


class Servers:
    def __init__(self, oai: GuardProvider, ant: FakeAnthropic) -> None:
        self.oai, self.ant = oai, ant

    def of(self, case: Case) -> GuardProvider | FakeAnthropic:
        return self.ant if case.sdk == "anthropic" else self.oai


@pytest.fixture
def servers(oai: GuardProvider, ant: FakeAnthropic) -> Servers:
    return Servers(oai, ant)


@pytest.mark.parametrize(("kind", "case"), PAIRS)
async def test_refused_when_killed(
    kind: str, case: Case, fence: TokenFence, make_client: Callable[[str], Any], servers: Servers
) -> None:
    client = fence.guard(make_client(kind), tenant="acme", feature="chat")
    await fence.kill("acme")
    with pytest.raises(TenantDisabled) as info:
        await case.run(client)
    assert isinstance(info.value, sdk_of(case).PermissionDeniedError)
    assert info.value.status_code == 403
    assert servers.of(case).calls == 0


@pytest.mark.parametrize(("kind", "case"), PAIRS)
async def test_refused_over_budget(
    kind: str, case: Case, fence: TokenFence, make_client: Callable[[str], Any], servers: Servers
) -> None:
    await fence.set_plan("acme", "tiny")
    client = fence.guard(make_client(kind), tenant="acme")
    with pytest.raises(BudgetExceeded) as info:
        await case.run(client)
    sdk = sdk_of(case)
    assert isinstance(info.value, sdk.APIStatusError)
    if sdk is anthropic:
        assert isinstance(info.value, anthropic.PaymentRequiredError)
    assert info.value.status_code == 402
    assert info.value.response.json()["error"] == "ai_budget_exceeded"
    assert "ratelimit" in info.value.response.headers  # no Retry-After: it can never fit
    assert servers.of(case).calls == 0
    assert await spent(fence) == (0, 0)


@pytest.mark.parametrize(("kind", "case"), PAIRS)
async def test_refused_model_not_allowed(
    kind: str, case: Case, fence: TokenFence, make_client: Callable[[str], Any], servers: Servers
) -> None:
    client = fence.guard(make_client(kind), tenant="acme")
    with pytest.raises(ModelNotAllowed) as info:
        await case.run(client, case.denied)
    assert isinstance(info.value, sdk_of(case).PermissionDeniedError)
    assert info.value.to_dict()["error"] == "ai_model_not_allowed"
    assert servers.of(case).calls == 0


@pytest.mark.parametrize(("kind", "case"), PAIRS)
async def test_charged_usage_at_list_price(
    kind: str, case: Case, fence: TokenFence, make_client: Callable[[str], Any], servers: Servers
) -> None:
    client = fence.guard(make_client(kind), tenant="acme")
    await case.run(client)
    assert servers.of(case).calls == 1
    assert await spent(fence) == (case.cost, 0)


@pytest.mark.parametrize(("kind", "case"), PAIRS)
async def test_released_on_provider_error(
    kind: str, case: Case, fence: TokenFence, make_client: Callable[[str], Any], servers: Servers
) -> None:
    client = fence.guard(make_client(kind), tenant="acme")
    servers.of(case).fail_next = 1
    with pytest.raises(sdk_of(case).InternalServerError):
        await case.run(client)
    assert servers.of(case).calls == 1
    assert await spent(fence) == (0, 0)
