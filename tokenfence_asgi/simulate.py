"""``tokenfence_asgi.simulate``, kept as a path: the module is ``tokenfence_asgi.ops.simulate``."""

from tokenfence_asgi.ops.simulate import *  # noqa: F403
from tokenfence_asgi.ops.simulate import __all__ as __all__
