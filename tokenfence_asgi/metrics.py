"""``tokenfence_asgi.metrics``, kept as a path: the module is ``tokenfence_asgi.ops.metrics``."""

from tokenfence_asgi.ops.metrics import *  # noqa: F403
from tokenfence_asgi.ops.metrics import __all__ as __all__
