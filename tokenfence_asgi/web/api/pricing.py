"""Token counts priced for the HTTP API: candidates at reserve, usage at commit.

Prices come from a ``PriceBook`` (by default the fence's own). Its first lookup may import
LiteLLM's price map (seconds), so that happens in a worker thread. A model without a price is
a 422 ``no_price`` naming the field; usage is priced at no less than the reserved model.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal

import anyio.to_thread
import structlog

from tokenfence_asgi.errors import ConfigError, InvalidAmount
from tokenfence_asgi.money import to_nanos
from tokenfence_asgi.pricing.book import ModelPrice, PriceBook
from tokenfence_asgi.results import Reservation
from tokenfence_asgi.web.api.models import TokenCandidate
from tokenfence_asgi.web.api.problems import ApiError, invalid

__all__ = ["NoPrice", "Pricer"]

log = structlog.get_logger("tokenfence_asgi")


class NoPrice(Exception):
    """A model the price book cannot price (raised through the engine from a candidate list)."""

    def __init__(self, problem: ApiError) -> None:
        super().__init__(problem.message)
        self.problem = problem


class Pricer:
    """Prices token counts with one price book."""

    def __init__(self, prices: PriceBook) -> None:
        self.prices = prices
        self._loaded = False

    async def preload(self) -> None:
        """Import LiteLLM's price map now, in a worker thread, when it is installed."""

        def load() -> None:
            with contextlib.suppress(ImportError):
                _ = self.prices.litellm

        await anyio.to_thread.run_sync(load)
        self._loaded = True

    async def load(self, model: str) -> None:
        """Look one model up in a worker thread first: that may import LiteLLM (seconds)."""
        if self._loaded or self.prices.override(model) is not None:
            return
        with contextlib.suppress(ConfigError, ImportError):
            await anyio.to_thread.run_sync(self.prices.price, model)
        self._loaded = True

    def price(self, model: str, field: str) -> ModelPrice:
        """The price of ``model``; ``NoPrice`` naming ``field`` when there is none."""
        try:
            return self.prices.price(model)
        except ConfigError as exc:
            raise NoPrice(ApiError(422, "no_price", exc.message, field=field)) from None
        except ImportError:
            raise NoPrice(
                ApiError(
                    422,
                    "no_price",
                    f"no price for model {model!r}: the service has no price for it and LiteLLM "
                    "(its price map) is not installed; send estimate in dollars instead",
                    field=field,
                )
            ) from None

    def estimate(self, model: str, index: int, c: TokenCandidate) -> int:
        """The worst case of candidate ``index`` at ``model``, in nano-dollars (rounded up)."""
        where = f"candidates[{index}]"
        price = self.price(model, f"{where}.model")
        output = c.max_output_tokens
        if output is None:
            output = price.max_output_tokens
        if output is None:
            raise NoPrice(
                invalid(
                    f"{where}.max_output_tokens",
                    f"required for model {model!r}: its price has no maximum output to assume",
                )
            )
        if price.max_output_tokens is not None:
            output = min(output, price.max_output_tokens)  # the provider cannot produce more
        try:
            return to_nanos(
                price.cost(c.input_tokens, output), rounding="up", field=f"{where} estimate"
            )
        except InvalidAmount as exc:
            raise NoPrice(ApiError(422, "invalid_amount", exc.message, field=where)) from None

    async def usage_cost(
        self, reservation: Reservation, model: str, input_tokens: int, output_tokens: int
    ) -> Decimal:
        """The token counts priced at ``model``, and at no less than the reserved model.

        The reservation's model is signed into its token; the commit's ``model`` is only the
        client's word. A cheaper name must not lower the price (the reserve chose the model,
        downgrade included, and checked the budget for it), while a dearer model that answered
        instead is charged at its own price: the money was spent.
        """
        reserved = reservation.model
        priced = [model] if reserved is None or reserved == model else [model, reserved]
        costs = []
        for name in priced:
            await self.load(name)
            try:
                price = self.price(name, "model")
            except NoPrice as exc:
                problem = exc.problem
                if name != model:
                    problem = invalid(
                        "model",
                        f"the reservation was made for model {name!r}, which the service "
                        f"cannot price, so token counts named for {model!r} cannot be priced "
                        "at no less than it; send cost (dollars) instead",
                        "no_price",
                    )
                raise problem from None
            costs.append(price.cost(input_tokens, output_tokens))
        if len(costs) == 2 and costs[1] > costs[0]:
            log.info(
                "commit_priced_as_reserved",
                tenant=reservation.tenant_id,
                reservation_id=reservation.id,
                model=model,
                reserved_model=reserved,
            )
        return max(costs)
