"""``run_demo``: serve the demo app with uvicorn, tell the story against it, clean up after."""

import asyncio
import contextlib
import json
import os
import signal
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.markup import escape
from starlette.types import ASGIApp

from tokenfence_asgi.cli.demo.app import BURNER, TENANTS, build_app, dashboard
from tokenfence_asgi.cli.demo.story import HELLO, Scenario, plans_table
from tokenfence_asgi.engine.fence import TokenFence
from tokenfence_asgi.ops.simulate import delete_prefix

__all__ = ["DemoError", "run_demo"]

# LiteLLM's own use of pydantic warns about its TypedDicts; nothing a demo user can act on.
_LITELLM_WARNINGS = (
    r"Items? .* on TypedDict class .* using the `ReadOnly` qualifier",
    r"Accessing the 'model_(computed_)?fields' attribute on the inst",
)
_CALLBACK_LISTS = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
)


class DemoError(Exception):
    """The demo could not start (port in use) or its story did not happen."""


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling: ``run_demo`` cleans up after a signal.

    uvicorn re-raises a SIGTERM it caught once it has shut down, which would end the process
    before the demo's keys are deleted from a shared Redis.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGINT and SIGTERM stop ``server`` gracefully (a second SIGINT: at once)."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or exc
        raise DemoError(f"cannot listen on {host}:{port}: {reason}; pass another --port") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    """How a client on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _import_litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices
    for message in _LITELLM_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on refusals
    return litellm


@contextlib.asynccontextmanager
async def _litellm_callback(fence: TokenFence) -> AsyncIterator[None]:
    """Install ``TokenFenceCallback(fence)`` as LiteLLM's callback; restore LiteLLM's lists."""
    litellm = _import_litellm()
    from tokenfence_asgi.litellm import TokenFenceCallback

    saved = {name: list(getattr(litellm, name)) for name in _CALLBACK_LISTS}
    callback = TokenFenceCallback(fence)
    litellm.callbacks = [callback]
    try:
        yield
    finally:
        callback.close()
        for name, value in saved.items():
            setattr(litellm, name, value)


async def run_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    redis_url: str | None = None,
    once: bool = False,
    console: Console | None = None,
) -> bool:
    """Serve the demo app, tell the scenario against it, then serve until stopped.

    ``once`` stops after the scenario (``port=0``: any free port). Returns whether the story
    happened as told (a 402 for the tenant that spent its budget, 200 for the others). Raises
    ``DemoError`` when the port cannot be bound, ``StoreUnavailable`` when Redis cannot be
    reached.
    """
    console = console or Console()
    prefix = "tfdemo" if redis_url is None else f"tfdemo-{uuid.uuid4().hex[:8]}"
    fence = TokenFence(redis_url=redis_url, prefix=prefix)
    sock: socket.socket | None = None
    try:
        store = "the embedded store" if redis_url is None else f"Redis (keys under {prefix}:)"
        console.print(
            f"[bold]tokenfence demo[/]: a FastAPI app on {escape(store)}, four tenants, "
            "a fake LLM provider (no API key, no network)"
        )
        for tenant, plan in TENANTS.items():
            await fence.set_plan(tenant, plan)
        console.print(plans_table(fence))
        sock = _bind(host, port)
        base = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
        console.print("Loading LiteLLM (it takes a few seconds)...", style="dim")
        with console.status("loading LiteLLM..."):
            installed = _litellm_callback(fence)
            await installed.__aenter__()
        try:
            admin = dashboard(fence)
            app = build_app(fence, f"{base}/provider/v1", dashboard=admin)
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
            server = _Server(config)
            with _stop_on_signals(server):
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                while not server.started:
                    if serving.done():
                        await serving  # raises what stopped it
                        raise DemoError("the server stopped while starting")
                    await asyncio.sleep(0.01)
                try:
                    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                        ok = await Scenario(client, fence, console).run()
                    if once:
                        server.should_exit = True
                    else:
                        _print_try_it(console, base, admin)
                except BaseException:
                    server.should_exit = True
                    raise
                finally:
                    await serving
                    await app.state.sdk_client.close()
        finally:
            await installed.__aexit__(None, None, None)
    finally:
        if sock is not None:
            sock.close()
        await fence.aclose()
        if redis_url is not None:
            with contextlib.suppress(Exception):
                await delete_prefix(redis_url, prefix)
    return ok


def _print_try_it(console: Console, base: str, admin: tuple[ASGIApp, str] | None) -> None:
    lines = [f"\nTry it (the app is at {base}, its API docs at {base}/docs; Ctrl-C stops it):"]
    body = "'" + json.dumps({"message": HELLO}) + "'"
    for tenant, outcome in ((BURNER, "402: its budget is spent"), ("acme", "200: served")):
        lines.append(
            f"  curl -s {base}/chat -H 'X-Tenant-ID: {tenant}' "
            f"-H 'Content-Type: application/json' -d {body}    # {outcome}"
        )
    lines.append(f"  curl -s {base}/status -H 'X-Tenant-ID: {BURNER}'")
    if admin is not None:
        lines.append(f"  dashboard: {base}/admin/ (admin token {admin[1]})")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)
    console.file.flush()
