"""The HTTP API package's imports: pydantic only when used, never the CLI's Typer or uvicorn."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(statement: str) -> set[str]:
    """The modules of interest that ``statement`` loads in a fresh interpreter."""
    code = (
        f"import sys; {statement}; "
        "print(' '.join(m for m in ('pydantic', 'typer', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return set(out.stdout.split())


def test_the_library_does_not_need_pydantic() -> None:
    assert _loaded_after("import tokenfence_asgi") == set()


def test_the_api_imports_neither_typer_nor_uvicorn() -> None:
    assert _loaded_after("import tokenfence_asgi.web.api") == {"pydantic"}
    assert _loaded_after("from tokenfence_asgi.web.service import service_app") == {"pydantic"}


def test_the_documented_paths_name_the_same_objects() -> None:
    import tokenfence_asgi
    from tokenfence_asgi import service as shim
    from tokenfence_asgi.cli import serve
    from tokenfence_asgi.web import api, service

    assert service.service_app is shim.service_app is api.service_app
    assert tokenfence_asgi.service_app is api.service_app
    assert service.openapi_schema is shim.openapi_schema is api.openapi_schema
    assert service.register is shim.register is serve.register  # the command, from the CLI
