"""``tokenfence_asgi.web.service``, kept as a path: the HTTP API is ``tokenfence_asgi.web.api``."""

from typing import Any

from tokenfence_asgi.web.api import openapi_schema, service_app

__all__ = ["openapi_schema", "service_app"]


def __getattr__(name: str) -> Any:
    if name == "register":  # the ``serve`` command, now on the CLI's side
        from tokenfence_asgi.cli.serve import register

        return register
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
