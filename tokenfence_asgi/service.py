"""``tokenfence_asgi.service``, kept as a path: the module is ``tokenfence_asgi.web.service``."""

from tokenfence_asgi.web.service import *  # noqa: F403
from tokenfence_asgi.web.service import __all__ as __all__

if __name__ == "__main__":
    import runpy

    runpy.run_module("tokenfence_asgi.web.service", run_name="__main__")
