"""Alert webhooks against a real local receiver: one delivery per crossing, signed, retried,
dropped with a log line when the receiver is down, and never in the way of an LLM call."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import FakeClock
from tests.e2e.servers import free_port, serve
from tokenfence_asgi import Alert, BudgetExceeded, ConfigError, Limit, Plan, TokenFence
from tokenfence_asgi.ops.webhooks import (
    SIGNATURE_HEADER,
    WebhookSender,
    sign_payload,
    verify_signature,
)

pytestmark = pytest.mark.slow

SECRET = "webhook-secret-for-the-tests"
DAILY = Plan("daily", [Limit("1d", max_cost="10")])


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on loopback: records every request, answers from ``statuses``."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                self.requests.append(Received(dict(request.headers), body, time.monotonic()))
                status = self.statuses.pop(0) if self.statuses else 200
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return Response(status_code=status, headers={"Retry-After": "0"})

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def alerts(self) -> list[dict[str, object]]:
        return [json.loads(r.body)["alert"] for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with serve(r.app()) as url:
        r.url = f"{url}/hook"
        yield r


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def alert(threshold: int = 80, tenant: str = "acme") -> Alert:
    return Alert(
        tenant_id=tenant,
        feature=None,
        scope="tenant",
        pool=None,
        window="1d",
        metric="cost",
        threshold=threshold,
        used=Decimal("8.5"),
        limit=Decimal(10),
    )


async def spend(fence: TokenFence, tenant: str, amount: str) -> None:
    reservation = await fence.reserve(tenant, amount)
    await fence.commit(reservation, amount)


async def test_exactly_one_signed_delivery_per_crossing(
    make_fence: Callable[..., TokenFence], clock: FakeClock, receiver: Receiver
) -> None:
    fence = make_fence(plans=[DAILY], default_plan="daily")
    other_instance = make_fence(plans=[DAILY], default_plan="daily")
    sender = WebhookSender(receiver.url, SECRET, backoff_s=0.01)
    fence.on_alert(sender)
    other_instance.on_alert(sender)
    # 10%, 40%, 60% (crosses 50), 70%, 85% (crosses 80), 90%, 100% (crosses 100)
    for amount in ("1", "3", "2", "1", "1.5", "0.5"):
        await spend(fence, "acme", amount)
    await spend(other_instance, "acme", "1")  # another instance: the store decides, once
    for instance in (fence, other_instance):
        with pytest.raises(BudgetExceeded):
            await instance.reserve("acme", "0.01")  # refusals past 100% alert no more
    await spend(fence, "globex", "1")  # 10% of another tenant: nothing
    await eventually(lambda: sender.stats.queued == 3)
    assert await sender.drain(10)
    assert [a["threshold"] for a in receiver.alerts()] == [50, 80, 100]
    assert [(a["tenant_id"], a["used"], a["limit"]) for a in receiver.alerts()] == [
        ("acme", "6", "10"),
        ("acme", "8.5", "10"),
        ("acme", "10", "10"),
    ]
    for request in receiver.requests:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["tokenfence-event"] == "budget_alert"
        signature = request.headers[SIGNATURE_HEADER.lower()]
        assert verify_signature(SECRET, request.body, signature)
        assert not verify_signature("another-secret-of-16+", request.body, signature)
        assert not verify_signature(SECRET, request.body + b" ", signature)
        payload = json.loads(request.body)
        assert payload["id"] == request.headers["tokenfence-delivery"]
        assert payload["type"] == "budget_alert"
        assert "reached" in str(payload["text"])
    assert len({r.headers["tokenfence-delivery"] for r in receiver.requests}) == 3
    assert (sender.stats.delivered, sender.stats.dropped, sender.stats.retries) == (3, 0, 0)

    clock.advance(86400)  # a new day is a new period: its crossings are new alerts
    await spend(fence, "acme", "5")
    await eventually(lambda: sender.stats.delivered == 4)
    assert receiver.alerts()[-1]["threshold"] == 50
    await sender.aclose()


async def test_a_repeated_alert_has_its_first_delivery_id_on_any_instance(
    make_fence: Callable[..., TokenFence], receiver: Receiver
) -> None:
    """A commit whose reply was lost and that is sent again (here by another instance) reports
    its alerts again, marked ``repeated``: the receiver gets the same ``TokenFence-Delivery``
    for each and can drop the repeat."""
    plan = Plan("a", [Limit("1d", max_cost="1")])
    lost = make_fence(plans=[plan], default_plan="a")  # its caller never saw the reply
    fence = make_fence(plans=[plan], default_plan="a")
    first_sender = WebhookSender(receiver.url, SECRET, backoff_s=0.01)
    second_sender = WebhookSender(receiver.url, SECRET, backoff_s=0.01)
    lost.on_alert(first_sender)
    fence.on_alert(second_sender)
    r = await fence.reserve("acme", "0.9", reservation_id="call-1", feature="chat")
    assert (await lost.commit(r, "0.85")).duplicate is False  # crosses 50% and 80%
    assert (await fence.commit(r, "0.85")).duplicate is True  # the retry: the same alerts
    await eventually(lambda: first_sender.stats.queued + second_sender.stats.queued == 4)
    assert await first_sender.drain(10)
    assert await second_sender.drain(10)
    seen = sorted(
        (a["threshold"], a["repeated"], a["reservation_id"], r.headers["tokenfence-delivery"])
        for a, r in zip(receiver.alerts(), receiver.requests, strict=True)
    )
    assert [row[:3] for row in seen] == [
        (threshold, repeated, "call-1") for threshold in (50, 80) for repeated in (False, True)
    ]
    assert seen[0][3] == seen[1][3] != seen[2][3] == seen[3][3]
    assert all(
        json.loads(r.body)["id"] == r.headers["tokenfence-delivery"] for r in receiver.requests
    )
    # another tenant's call with the same reservation id is another alert
    other = await fence.reserve("globex", "0.9", reservation_id="call-1")
    await fence.commit(other, "0.85")
    await eventually(lambda: second_sender.stats.queued == 4)
    assert await second_sender.drain(10)
    assert len({r.headers["tokenfence-delivery"] for r in receiver.requests}) == 4
    await first_sender.aclose()
    await second_sender.aclose()


async def test_an_alert_without_a_reservation_id_gets_a_new_delivery_id(receiver: Receiver) -> None:
    sender = WebhookSender(receiver.url, SECRET)
    await sender(alert())
    await sender(alert())
    assert await sender.drain(10)
    assert [a["reservation_id"] for a in receiver.alerts()] == [None, None]
    assert len({r.headers["tokenfence-delivery"] for r in receiver.requests}) == 2
    await sender.aclose()


async def test_a_slow_receiver_does_not_slow_the_llm_call(
    make_fence: Callable[..., TokenFence], receiver: Receiver
) -> None:
    receiver.delay_s = 2.0
    fence = make_fence(plans=[DAILY], default_plan="daily")
    sender = WebhookSender(receiver.url, SECRET, timeout_s=5)
    fence.on_alert(sender)
    await spend(fence, "acme", "4")  # warm up: scripts loaded, connections open
    started = time.perf_counter()
    reservation = await fence.reserve("acme", "2")
    await fence.commit(reservation, "2")  # crosses 50%: an alert is sent, slowly
    elapsed = time.perf_counter() - started
    await eventually(lambda: len(receiver.requests) == 1)
    assert sender.pending == 1  # the receiver is still sleeping on it
    started = time.perf_counter()
    for _ in range(5):
        await spend(fence, "acme", "0.1")  # more calls while the delivery is in flight
    more = time.perf_counter() - started
    assert elapsed < 0.5, f"reserve + commit took {elapsed:.3f}s with a 2 s webhook"
    assert more < 1.0
    assert sender.stats.delivered == 0
    assert await sender.drain(10)
    assert sender.stats.delivered == 1
    await sender.aclose()


async def test_receiver_down_is_retried_then_dropped_with_a_log_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    sender = WebhookSender(url, SECRET, max_attempts=3, backoff_s=0.01, max_backoff_s=0.05)
    with structlog.testing.capture_logs() as logs:
        await sender(alert())
        assert await sender.drain(10)
    stats = sender.stats
    assert (stats.attempts_failed, stats.retries, stats.dropped_failed, stats.delivered) == (
        3,
        2,
        1,
        0,
    )
    failed = [e for e in logs if e["event"] == "webhook_attempt_failed"]
    assert [e["attempt"] for e in failed] == [1, 2]
    assert all("ConnectError" in e["error"] for e in failed)
    (dropped,) = [e for e in logs if e["event"] == "webhook_dropped"]
    assert dropped["log_level"] == "error"
    assert (dropped["reason"], dropped["attempts"], dropped["tenant"]) == (
        "attempts_exhausted",
        3,
        "acme",
    )
    assert dropped["webhook"] == url.rsplit("/", 1)[0]  # scheme, host and port: never the path
    await sender.aclose()


async def test_server_errors_are_retried_with_the_same_delivery_id(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 200]
    sender = WebhookSender(receiver.url, SECRET, backoff_s=0.01, max_backoff_s=0.05)
    await sender(alert())
    assert await sender.drain(10)
    assert len(receiver.requests) == 3
    assert len({r.headers["tokenfence-delivery"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    assert all(
        verify_signature(SECRET, r.body, r.headers[SIGNATURE_HEADER.lower()])
        for r in receiver.requests
    )
    assert (sender.stats.delivered, sender.stats.retries, sender.stats.dropped) == (1, 2, 0)
    await sender.aclose()


async def test_a_client_error_is_final(receiver: Receiver) -> None:
    receiver.statuses = [400]
    sender = WebhookSender(receiver.url, SECRET, backoff_s=0.01)
    with structlog.testing.capture_logs() as logs:
        await sender(alert())
        assert await sender.drain(10)
    assert len(receiver.requests) == 1
    assert (sender.stats.dropped_failed, sender.stats.retries) == (1, 0)
    (dropped,) = [e for e in logs if e["event"] == "webhook_dropped"]
    assert (dropped["reason"], dropped["status"]) == ("rejected", 400)
    await sender.aclose()


async def test_429_is_retried(receiver: Receiver) -> None:
    receiver.statuses = [429]
    sender = WebhookSender(receiver.url, SECRET, backoff_s=0.01)
    await sender(alert())
    assert await sender.drain(10)
    assert (len(receiver.requests), sender.stats.delivered) == (2, 1)
    await sender.aclose()


async def test_a_full_queue_drops_and_counts() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    sender = WebhookSender(url, SECRET, queue_size=2, max_attempts=1)
    with structlog.testing.capture_logs() as logs:
        accepted = [sender.submit(alert(tenant=f"t{i}")) for i in range(5)]
        assert accepted == [True, True, False, False, False]
        assert sender.stats.dropped_full == 3
        assert [e["reason"] for e in logs if e["event"] == "webhook_dropped"] == ["queue_full"] * 3
        assert await sender.drain(10)
    assert sender.stats.dropped_failed == 2
    assert sender.stats.dropped == 5
    await sender.aclose()
    assert sender.submit(alert()) is False  # closed
    assert sender.stats.dropped_closed == 1


async def test_thresholds_filter(receiver: Receiver) -> None:
    sender = WebhookSender(receiver.url, SECRET, thresholds={100})
    for threshold in (50, 80, 100):
        await sender(alert(threshold))
    assert await sender.drain(10)
    assert [a["threshold"] for a in receiver.alerts()] == [100]
    await sender.aclose()


async def test_a_client_of_your_own_is_used_and_not_closed(receiver: Receiver) -> None:
    async with httpx.AsyncClient(headers={"X-Extra": "yes"}) as own:
        sender = WebhookSender(receiver.url, SECRET, client=own, headers={"X-Team": "ops"})
        await sender(alert())
        assert await sender.drain(10)
        await sender.aclose()
        assert not own.is_closed
    assert receiver.requests[0].headers["x-extra"] == "yes"
    assert receiver.requests[0].headers["x-team"] == "ops"


def test_signatures() -> None:
    body = b'{"a":1}'
    now = 1_767_225_600
    header = sign_payload(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature(SECRET, body, header, now=now)
    assert verify_signature(SECRET, body, header, now=now + 299)
    assert not verify_signature(SECRET, body, header, now=now + 301)  # a replay, later
    assert not verify_signature(SECRET, body, header, now=now - 301)
    assert verify_signature(["old-secret-0123456789", SECRET], body, header, now=now)  # rotation
    rotated = header + "," + sign_payload("next-secret-0123456789", body, now).split(",")[1]
    assert verify_signature("next-secret-0123456789", body, rotated, now=now)
    for bad in (None, "", "t=1", "v1=abc", f"t=x,v1={header.split('v1=')[1]}", "garbage"):
        assert not verify_signature(SECRET, body, bad, now=now)
    assert not verify_signature(SECRET, b'{"a":2}', header, now=now)


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="http"):
        WebhookSender("ftp://example.com/x", SECRET)
    with pytest.raises(ConfigError, match="16 bytes"):
        WebhookSender("https://example.com/x", "short")
    with pytest.raises(ConfigError, match="max_attempts"):
        WebhookSender("https://example.com/x", SECRET, max_attempts=0)
    with pytest.raises(ConfigError, match="thresholds"):
        WebhookSender("https://example.com/x", SECRET, thresholds={75})
    sender = WebhookSender(
        "https://user:pw@hooks.example.com/services/T0/B0/SECRETPATH?k=v", SECRET
    )
    assert "SECRETPATH" not in repr(sender)
    assert "pw" not in repr(sender)
    assert sender.name == "https://hooks.example.com"
