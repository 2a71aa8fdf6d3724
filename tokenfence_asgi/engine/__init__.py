"""The engine: ``TokenFence``, a facade over settings, routing, holds, controls and reads."""

from tokenfence_asgi.engine.fence import TokenFence

__all__ = ["TokenFence"]
