"""``tokenfence_asgi.admin``, kept as a path: the module is ``tokenfence_asgi.web.admin``."""

from tokenfence_asgi.web.admin import *  # noqa: F403
from tokenfence_asgi.web.admin import __all__ as __all__
