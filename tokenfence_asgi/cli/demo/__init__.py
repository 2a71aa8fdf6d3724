"""``tokenfence demo``: four tenants share one FastAPI app, and one of them runs out of AI budget.

The app (``app``) has ``/chat``, ``/document_analysis`` and ``/search`` endpoints behind
``TokenFenceMiddleware``; each calls ``litellm.acompletion`` through ``TokenFenceCallback``;
``/sdk/chat`` calls the official OpenAI SDK's ``AsyncOpenAI`` through ``fence.guard`` instead
(umbrella is served there), on the same budgets. The LLM is a fake OpenAI-compatible provider
served by the same process (``/provider/v1``): it answers with realistic token counts, so LiteLLM
prices every call as it would a real one, and no API key or network is needed. When the server
is up (``run``), a scripted scenario (``story``) runs against it over HTTP: every tenant is
served, then globex's agent is told to "analyse everything" until the fence downgrades it and
then refuses it with a 402, while the other tenants are still served. Then the server keeps
running for curl (``once=True``: it stops instead).

Needs the ``demo`` extra (FastAPI, uvicorn, LiteLLM, openai); LiteLLM is imported with its bundled
price map (``LITELLM_LOCAL_MODEL_COST_MAP=True``), so nothing is downloaded.
"""

from tokenfence_asgi.cli.demo.app import BURNER, TENANTS, build_app
from tokenfence_asgi.cli.demo.run import DemoError, run_demo

__all__ = ["BURNER", "TENANTS", "DemoError", "build_app", "run_demo"]
