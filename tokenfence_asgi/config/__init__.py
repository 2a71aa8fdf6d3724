"""Budget configuration: ``Limit``, ``Plan``, the built-in plans, and plans read from TOML.

``Limit`` and ``Plan`` are frozen dataclasses validated when built, so a plan the engine sees is
always consistent; every error is a ``ConfigError`` naming the field and the bad value.
"""

from tokenfence_asgi.config import files, plan
from tokenfence_asgi.config.files import *  # noqa: F403
from tokenfence_asgi.config.plan import *  # noqa: F403

__all__ = [*plan.__all__, *files.__all__]
