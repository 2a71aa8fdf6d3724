"""``tokenfence_asgi.service``, kept as a path: the module is ``tokenfence_asgi.web.api``."""

from tokenfence_asgi.web.service import *  # noqa: F403
from tokenfence_asgi.web.service import __all__ as __all__
from tokenfence_asgi.web.service import __getattr__ as __getattr__

if __name__ == "__main__":
    import runpy

    runpy.run_module("tokenfence_asgi.cli.serve", run_name="__main__")
