"""``tokenfence_asgi.cli_ledger``, kept as a path: the module is ``tokenfence_asgi.cli.ledger``."""

from tokenfence_asgi.cli.ledger import *  # noqa: F403
from tokenfence_asgi.cli.ledger import __all__ as __all__

if __name__ == "__main__":
    import runpy

    runpy.run_module("tokenfence_asgi.cli.ledger", run_name="__main__")
