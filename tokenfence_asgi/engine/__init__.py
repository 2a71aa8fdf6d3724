"""The engine: ``TokenFence`` and what it runs beside the store (alerts, observers, allowance)."""

from tokenfence_asgi.engine.fence import TokenFence

__all__ = ["TokenFence"]
