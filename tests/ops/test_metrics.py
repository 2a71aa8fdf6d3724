"""Prometheus metrics: what is counted, with bounded labels, in a registry of the fence's own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tokenfence_asgi import (
    BudgetExceeded,
    ConfigError,
    Limit,
    Plan,
    RequestLimitExceeded,
    StoreUnavailable,
    TenantDisabled,
    TokenFence,
    TooManyOpenHolds,
)
from tokenfence_asgi.ops.metrics import FenceMetrics
from tokenfence_asgi.ops.webhooks import WebhookSender

PLANS = [
    Plan(
        "basic",
        [Limit("1d", max_cost="1"), Limit("1h", max_requests=100)],
        features={"chat": 0.5, "search": 0.2},
    ),
    Plan("pro", [Limit("1d", max_cost="100")]),
]


def samples(metrics: FenceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: FenceMetrics, name: str, **labels: str) -> float:
    return samples(metrics).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counts_reservations_refusals_spend_and_holds(
    make_fence: Callable[..., TokenFence],
) -> None:
    fence = make_fence(plans=PLANS, default_plan="basic")
    metrics = FenceMetrics(fence)
    first = await fence.reserve("acme", "0.30", feature="chat")
    assert value(metrics, "tokenfence_holds_open") == 1
    assert value(metrics, "tokenfence_held_dollars") == pytest.approx(0.30)
    await fence.commit(first, "0.25")
    await fence.commit(first, "0.25")  # a repeat: not counted twice
    assert value(metrics, "tokenfence_holds_open") == 0
    other = await fence.reserve("acme", "0.10", feature="translate")  # not a plan feature
    await fence.commit(other, "0.10")
    plain = await fence.reserve("acme", "0.05")
    await fence.release(plain)
    await fence.set_plan("bigco", "pro")
    big = await fence.reserve("bigco", "2", feature="chat")
    await fence.commit(big, "1.5")
    with pytest.raises(BudgetExceeded):
        await fence.reserve("acme", "0.9", feature="chat")
    with pytest.raises(BudgetExceeded):
        await fence.reserve("acme", "0.4", feature="translate")  # chat's share is kept for chat
    await fence.kill("acme")
    with pytest.raises(TenantDisabled):
        await fence.reserve("acme", "0.01")

    assert value(metrics, "tokenfence_reservations_total", plan="basic", feature="chat") == 1
    assert value(metrics, "tokenfence_reservations_total", plan="basic", feature="other") == 1
    assert value(metrics, "tokenfence_reservations_total", plan="basic", feature="none") == 1
    assert value(metrics, "tokenfence_reservations_total", plan="pro", feature="chat") == 1
    assert value(metrics, "tokenfence_spend_dollars_total", plan="basic", feature="chat") == (
        pytest.approx(0.25)
    )
    assert value(metrics, "tokenfence_spend_dollars_total", plan="basic", feature="other") == (
        pytest.approx(0.10)
    )
    assert value(metrics, "tokenfence_spend_dollars_total", plan="pro", feature="chat") == 1.5
    assert value(metrics, "tokenfence_settlements_total", kind="committed") == 3
    assert value(metrics, "tokenfence_settlements_total", kind="duplicate") == 1
    assert value(metrics, "tokenfence_settlements_total", kind="released") == 1
    refusals = "tokenfence_refusals_total"
    assert value(metrics, refusals, reason="budget", scope="tenant", feature="chat") == 1
    assert value(metrics, refusals, reason="budget_share", scope="tenant", feature="other") == 1
    assert value(metrics, refusals, reason="killed", scope="tenant", feature="none") == 1
    assert value(metrics, "tokenfence_holds_open") == 0
    assert value(metrics, "tokenfence_script_duration_seconds_count", script="reserve") == 7
    assert value(metrics, "tokenfence_script_duration_seconds_count", script="commit") == 4
    # no tenant id anywhere: labels are plans, features, reasons
    text = generate_latest(metrics.registry).decode()
    assert "acme" not in text
    assert "bigco" not in text
    assert "translate" not in text


async def test_request_limits_and_alerts(make_fence: Callable[..., TokenFence]) -> None:
    plan = Plan("few", [Limit("1h", max_requests=2)])
    fence = make_fence(plans=[plan], default_plan="few")
    metrics = FenceMetrics(fence)
    for _ in range(2):
        await fence.commit(await fence.reserve("acme", "0.01"), "0.01")
    with pytest.raises(RequestLimitExceeded):
        await fence.reserve("acme", "0.01")
    await fence.aclose()  # the alert hooks have run
    assert (
        value(
            metrics, "tokenfence_refusals_total", reason="requests", scope="tenant", feature="none"
        )
        == 1
    )
    for threshold in ("50", "100"):
        assert (
            value(
                metrics,
                "tokenfence_alerts_total",
                threshold=threshold,
                metric="requests",
                scope="tenant",
                window="1h",
            )
            == 1
        )


async def test_too_many_open_holds_has_its_own_reason(
    make_fence: Callable[..., TokenFence],
) -> None:
    """A tenant with too many calls in flight is not one out of requests: another label."""
    fence = make_fence(plans=PLANS, default_plan="basic", max_open_holds=1)
    metrics = FenceMetrics(fence)
    held = await fence.reserve("acme", "0.01", feature="chat")
    with pytest.raises(TooManyOpenHolds):
        await fence.reserve("acme", "0.01", feature="chat")
    refusals = {"scope": "tenant", "feature": "chat"}
    assert value(metrics, "tokenfence_refusals_total", reason="open_holds", **refusals) == 1
    assert value(metrics, "tokenfence_refusals_total", reason="requests", **refusals) == 0
    await fence.release(held)


async def test_store_errors_and_script_errors() -> None:
    fence = TokenFence(redis_url="redis://127.0.0.1:1/0", timeout_s=0.2)
    metrics = FenceMetrics(fence)
    with pytest.raises(StoreUnavailable):
        await fence.status("acme")
    assert value(metrics, "tokenfence_store_errors_total") == 1
    assert value(metrics, "tokenfence_script_errors_total", script="status") == 1
    open_fence = TokenFence(redis_url="redis://127.0.0.1:1/0", timeout_s=0.2, on_store_error="open")
    open_metrics = FenceMetrics(open_fence)
    degraded = await open_fence.reserve("acme", "0.5")
    assert degraded.degraded
    assert value(open_metrics, "tokenfence_allowed_without_store_total") == 1
    assert value(open_metrics, "tokenfence_holds_open") == 0  # a degraded call holds nothing
    await fence.aclose()
    await open_fence.aclose()


async def test_registries_do_not_collide_and_yours_can_be_used(
    make_fence: Callable[..., TokenFence],
) -> None:
    one, two = make_fence(), make_fence()
    first, second = FenceMetrics(one), FenceMetrics(two)  # a registry each: no duplicates
    assert first.registry is not second.registry
    assert FenceMetrics.for_fence(one) is first
    mine = CollectorRegistry()
    shared = FenceMetrics(one, registry=mine, namespace="app_ai")
    await one.commit(await one.reserve("acme", "0.01"), "0.01")
    text = generate_latest(mine).decode()
    assert 'app_ai_reservations_total{feature="none",plan="free"} 1.0' in text
    assert value(first, "tokenfence_reservations_total", plan="free", feature="none") == 1
    assert value(second, "tokenfence_reservations_total", plan="free", feature="none") == 0
    with pytest.raises(ValueError, match="Duplicated"):
        FenceMetrics(two, registry=mine, namespace="app_ai")
    body, content_type = shared.exposition("application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    with pytest.raises(ConfigError):
        FenceMetrics(one, features="chat")


async def test_webhook_counts(make_fence: Callable[..., TokenFence]) -> None:
    fence = make_fence()
    metrics = FenceMetrics(fence)
    sender = metrics.track_webhook(
        WebhookSender("http://127.0.0.1:1/hook", "a-secret-of-16-bytes", max_attempts=1)
    )
    from tests.ops.test_webhooks import alert

    await sender(alert())
    assert await sender.drain(10)
    await asyncio.sleep(0)
    assert value(metrics, "tokenfence_webhook_queued_total", webhook="http://127.0.0.1:1") == 1
    assert value(metrics, "tokenfence_webhook_dropped_total", webhook="http://127.0.0.1:1") == 1
    assert value(metrics, "tokenfence_webhook_pending", webhook="http://127.0.0.1:1") == 0
    await sender.aclose()
