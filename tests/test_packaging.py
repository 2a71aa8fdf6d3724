"""The wheel carries every Lua script and the typing marker; scripts are well-formed."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tokenfence_asgi.store.scripts import SCRIPT_NAMES, helpers, script_source

ROOT = Path(__file__).resolve().parent.parent
LUA = sorted(p.name for p in (ROOT / "tokenfence_asgi" / "store" / "lua").glob("*.lua"))


@pytest.mark.slow
def test_wheel_ships_every_lua_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert LUA, "no Lua scripts found"
    for name in LUA:
        assert f"tokenfence_asgi/store/lua/{name}" in names
    assert "tokenfence_asgi/py.typed" in names


def test_every_script_has_a_file_and_the_shared_helpers_it_uses() -> None:
    assert {f"{n}.lua" for n in SCRIPT_NAMES} | {"_lib.lua"} == set(LUA)
    for name in SCRIPT_NAMES:
        text = (ROOT / "tokenfence_asgi" / "store" / "lua" / f"{name}.lua").read_text()
        body = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
        source = script_source(name)
        for names, helper in helpers():
            if any(re.search(rf"\b{n}\b", body) for n in names):
                assert helper in source, f"{name}.lua lacks {sorted(names)}"
    assert "local function fmt(n)" in script_source("reserve")
    assert "local function fmt(n)" not in script_source("approval")  # it uses no helper


@pytest.mark.parametrize("name", LUA)
def test_scripts_avoid_what_real_redis_refuses_or_fakeredis_lacks(name: str) -> None:
    """No os/io/dofile, no shebang flags, no bit/struct/cmsgpack, no float money commands."""
    text = (ROOT / "tokenfence_asgi" / "store" / "lua" / name).read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    assert not text.startswith("#!")
    for banned in (
        r"\bos\.",
        r"\bio\.",
        r"\bdofile\b",
        r"\bbit\.",
        r"\bstruct\.",
        r"cmsgpack",
        r"INCRBYFLOAT",
        r"HINCRBYFLOAT",
        r"redis\.sha1hex",
        r"redis\.replicate_commands",
    ):
        assert not re.search(banned, code), f"{name} uses {banned}"


def test_every_public_name_imports() -> None:
    """Each name in ``__all__`` resolves (the lazy ones import their module on first use)."""
    import tokenfence_asgi

    missing = [name for name in tokenfence_asgi.__all__ if not hasattr(tokenfence_asgi, name)]
    assert missing == []
    from tokenfence_asgi import TokenFenceMiddleware, feature, tenant_scope

    assert callable(TokenFenceMiddleware)
    assert callable(feature)
    assert callable(tenant_scope)
