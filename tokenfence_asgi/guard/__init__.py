"""``fence.guard(client)``: the official OpenAI and Anthropic SDK clients, fenced directly.

::

    from openai import AsyncOpenAI
    client = fence.guard(AsyncOpenAI())                      # tenant and feature from the context
    client = fence.guard(AsyncOpenAI(), tenant="acme", feature="batch")   # or fixed
    r = await client.chat.completions.create(model="gpt-4o", messages=msgs)   # as usual

The guarded client is a copy of ``client`` (same class hierarchy, same connection pool, same
methods and return types; ``client`` itself stays unguarded). Every paid call it makes, through
any resource, helper, ``with_options()``, ``copy()``, ``with_raw_response`` or
``with_streaming_response``, goes through the same ``CallPlanner`` as the LiteLLM callback: kill
switches, the plan's model allow-list and downgrade chain, input limits, tool policy, feature
shares and caps, a true upper-bound hold written into the call, then a commit of the provider's
usage at the price book's price, a release on a provider error, and for a stream that is
abandoned, its input and the output it produced. Paid calls the guard cannot bound are refused
(``CallNotFenced``), never let through. See ``guard.openai`` and ``guard.anthropic`` for what
each SDK's paths cost.

Refusals are raised as our errors deriving also from the SDK's status error (see
``guard._errors``), before anything is sent. Sync clients (``OpenAI``, ``Anthropic``) run the
fence's work on ``fence.portal``; call them from sync code, not on an event loop's thread.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from tokenfence_asgi.errors import ConfigError
from tokenfence_asgi.guard._fenced import CallNotFenced
from tokenfence_asgi.store.keys import validate_id

if TYPE_CHECKING:
    from tokenfence_asgi.engine.fence import TokenFence

__all__ = ["CallNotFenced", "guard"]

C = TypeVar("C")

_EXTRAS = {"openai": "openai", "anthropic": "anthropic"}
_HOOKS = ("request", "_process_response", "copy")


def _sdk(client: object) -> str | None:
    for cls in type(client).__mro__:
        root = cls.__module__.partition(".")[0]
        if root in _EXTRAS:
            return root
    return None


def guard(
    fence: TokenFence, client: C, *, tenant: str | None = None, feature: str | None = None
) -> C:
    """A fenced copy of an ``openai`` or ``anthropic`` client (see the module doc).

    ``tenant`` and ``feature`` fix who calls are charged to; without ``tenant``, each call is
    charged to the current request's or ``tenant_scope``'s tenant, and a paid call made
    outside both raises ``TenantRequired``. Raises ``TypeError`` for another client,
    ``ConfigError`` when the SDK cannot be guarded (naming the extra to install), ``InvalidId``
    for a bad tenant or feature.
    """
    from tokenfence_asgi.guard._fenced import Fenced
    from tokenfence_asgi.guard._intercept import STATE, guarded_class

    sdk = _sdk(client)
    if sdk is None:
        raise TypeError(
            "guard() fences openai.OpenAI, AsyncOpenAI, AzureOpenAI, AsyncAzureOpenAI, "
            f"anthropic.Anthropic and AsyncAnthropic clients, got {type(client).__name__}"
        )
    extra = _EXTRAS[sdk]
    try:
        module: Any = importlib.import_module(f"tokenfence_asgi.guard.{sdk}")
    except ImportError as exc:
        raise ConfigError(
            f"guarding a {sdk} client needs a newer {sdk} release: "
            f"pip install 'tokenfence-asgi[{extra}]' ({exc})"
        ) from None
    if not isinstance(client, module.CLIENTS):
        raise TypeError(
            f"guard() fences {', '.join(c.__name__ for c in module.CLIENTS)} (and subclasses) "
            f"of {sdk}, got {type(client).__name__}"
        )
    base = getattr(type(client), "__tokenfence_base__", type(client))  # guarded again
    if not all(hasattr(base, hook) for hook in _HOOKS):
        raise ConfigError(
            f"this {sdk} release cannot be guarded: pip install 'tokenfence-asgi[{extra}]'"
        )
    tenant_id = None if tenant is None else validate_id(tenant, what="tenant")
    feature_id = None if feature is None else validate_id(feature, what="feature")
    state = Fenced(fence, module.ADAPTER, tenant_id, feature_id)
    guarded: Any = client.copy()
    guarded.__class__ = guarded_class(base)
    guarded.__dict__[STATE] = state
    return guarded  # type: ignore[no-any-return]
