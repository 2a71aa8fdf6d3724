"""``python -m tokenfence_asgi``: the ``tokenfence`` command."""

import sys

from tokenfence_asgi.cli import main

sys.exit(main())
