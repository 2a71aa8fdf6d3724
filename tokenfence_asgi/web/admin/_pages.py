"""The dashboard: its page, script and style, package data served without the token."""

from __future__ import annotations

from importlib import resources

__all__ = ["PAGE_HEADERS", "PUBLIC", "TYPES", "dashboard_file"]

PUBLIC = {"/": "index.html", "/dashboard.js": "dashboard.js", "/dashboard.css": "dashboard.css"}
"""The routes that hold no data (the page asks for the token), and the file each serves."""

TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def dashboard_file(name: str) -> bytes:
    """The bytes of one of the dashboard's files (``index.html``, ``dashboard.js``, ...)."""
    return resources.files(__package__).joinpath("dashboard", name).read_bytes()
