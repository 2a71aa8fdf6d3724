"""LiteLLM calls made for a tenant, reserved, changed and charged: ``TokenFenceCallback``.

``litellm.callbacks = [TokenFenceCallback(fence)]`` fences every paid async call LiteLLM makes
(``acompletion``, ``aresponses``, ``atext_completion``, ``aembedding``, ``aimage_generation``,
``atranscription``, ``aspeech``, ``arerank``; plain or through a ``Router``; streamed or not)
inside a request, a ``tenant_scope``, or with ``metadata={"tenant_id": ..., "feature": ...}``.
What LiteLLM 1.110.2 (the pinned release) offers in SDK mode, measured, and what is used of it:

- ``async_pre_call_deployment_hook`` runs before the provider for every call type (and per
  Router attempt, on the chosen deployment): an exception raised there reaches the caller with
  its own type, before any provider call, and the kwargs it returns replace the call's. Here the
  call is described to the ``CallPlanner``, its worst case reserved, and the call changed: the
  chosen (maybe cheaper) model, the output limit the hold covers, ``include_usage`` for streams,
  and none of its own price arguments (``calls.sanitized``).
- A model passed positionally (``acompletion("gpt-4o", msgs)``) is not in the hook's kwargs, and
  adding one fails with "multiple values for argument 'model'": such calls are reserved at the
  requested model's price and never downgraded.
- Refusals derive from ``litellm.BudgetExceededError`` too (``_errors``), so a Router neither
  retries them nor puts a shared deployment in cooldown.
- ``async_log_success_event`` carries LiteLLM's cost of the response (``response_cost``); for a
  stream it fires once, after the last chunk, and after the caller has the response, so a
  commit may land after the request ended. Failures fire
  ``async_post_call_failure_deployment_hook`` (per attempt) and ``async_log_failure_event``.
- A stream the caller stops reading, or a call whose task is cancelled, fires no callback at
  all. LiteLLM runs its post-call rules on the caller's task for every chunk of a chat or text
  stream, with the text so far: ``_state.observe_stream`` counts it, and ``settle`` (run when the
  request or scope ends) charges such a stream its input plus what it streamed; a Responses API
  stream, which shows no chunk, is charged its hold; a call that produced nothing is released.
- Sync ``litellm.completion`` runs no hook that can refuse it (``_sync``):
  ``TokenFenceCallback.completion`` is the fenced sync entry point, and a plain sync call made
  for a tenant is charged after the fact.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before LiteLLM is imported

from tokenfence_asgi.calls.planner import tool_action
from tokenfence_asgi.litellm._state import APPROVAL_KEY, RESERVATION_KEY
from tokenfence_asgi.litellm.callback import TokenFenceCallback

__all__ = ["APPROVAL_KEY", "RESERVATION_KEY", "TokenFenceCallback", "tool_action"]
