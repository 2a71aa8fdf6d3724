"""The wheel carries the dashboard (page, script, style) next to the admin app that serves it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tokenfence_asgi.web.admin._pages import dashboard_file

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ("index.html", "dashboard.js", "dashboard.css")


@pytest.mark.slow
def test_wheel_ships_the_dashboard(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in DASHBOARD:
            path = f"tokenfence_asgi/web/admin/dashboard/{name}"
            assert path in names
            assert archive.read(path) == (ROOT / path).read_bytes()
    for module in ("admin", "metrics", "webhooks"):
        assert f"tokenfence_asgi/{module}.py" in names


def test_the_dashboard_loads_from_the_package() -> None:
    for name in DASHBOARD:
        assert dashboard_file(name)
    page = dashboard_file("index.html").decode()
    for name in DASHBOARD[1:]:
        assert name in page
