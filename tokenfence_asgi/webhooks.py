"""``tokenfence_asgi.webhooks``, kept as a path: the module is ``tokenfence_asgi.ops.webhooks``."""

from tokenfence_asgi.ops.webhooks import *  # noqa: F403
from tokenfence_asgi.ops.webhooks import __all__ as __all__
