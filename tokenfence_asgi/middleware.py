"""``tokenfence_asgi.middleware``, kept as a path: see ``tokenfence_asgi.web.middleware``."""

from tokenfence_asgi.web.middleware import *  # noqa: F403
from tokenfence_asgi.web.middleware import __all__ as __all__
