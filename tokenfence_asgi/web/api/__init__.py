"""The HTTP reserve / commit API: tenant budgets for services that are not written in Python.

``service_app(fence, token=...)`` is a Starlette app; mount it in an app of yours
(``app.mount("/ai-budget", service_app(fence, token=...))``) or run it with ``tokenfence serve``
(``tokenfence_asgi.cli.serve``). A Node, Go or any other service then spends from the same
tenant budgets, atomically, with the same rules as the Python middleware::

    POST /reserve         {"tenant", "feature"?, "request_id"?, "candidates": [...]}
                          -> 200 {"id": <reservation token>, "model", "amount", ...}
                          or the middleware's refusal: 402 / 429 / 403 / 413 / 503
    POST /commit          {"id", "cost"} or {"id", "input_tokens", "output_tokens", "model"?}
                          (token counts priced at no less than the reserved model)
    POST /release         {"id"}
    GET  /status/{tenant}
    GET  /openapi.json    the OpenAPI 3.1 schema (the only route without the service token)

Every other route needs ``Authorization: Bearer <service token>`` (401 otherwise). Bodies are
JSON objects checked strictly against the request models (``models``): unknown, missing or
mistyped fields, money that is not a decimal string, negative or absurd amounts, a zero
estimate and bad ids are 422 with the field named; bodies above ``max_body_bytes`` are 413,
other content types 415. Money crosses the API as strings of dollars (``"0.0125"``), and is
answered with 9 decimals (exact nano-dollars). The OpenAPI document is generated from the
route table (``routes``) and the models.

**Reservation tokens** (``tokens``). ``/reserve`` answers with ``id``, an opaque token that
carries what ``commit`` and ``release`` need and is signed with HMAC-SHA256 under
``signing_key``: the API keeps no state of its own, any instance sharing the key settles any
reservation, and a forged or altered token is refused (422 ``invalid_reservation``) before the
store is touched. A token is accepted for ``token_ttl`` seconds after it was issued (default:
the fence's ``record_ttl`` less a margin for clock skew), while the store still remembers how
the reservation was settled, so a repeated commit or release is always recognised
(``duplicate``) and never charged twice; an older token is refused (410
``reservation_expired``). The default ``signing_key`` is random per app: give one (16+ bytes)
to every instance when more than one process serves the API or tokens must outlive a restart
(``tokenfence serve`` makes one shared by its workers).

Needs pydantic (the ``server`` extra).
"""

from tokenfence_asgi.web.api.app import service_app
from tokenfence_asgi.web.api.openapi import openapi_schema

__all__ = ["openapi_schema", "service_app"]
