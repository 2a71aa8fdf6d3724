"""The package's layers (README, "Development"): a module imports only from its layer or above."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tokenfence_asgi"

# Rank of each top-level module or folder: a module may import what ranks at or below its own.
LAYERS = {
    **dict.fromkeys(
        ["_text", "errors", "money", "ids", "results", "config", "policy", "context", "endpoints"],
        0,
    ),
    "store": 1,
    "pricing": 2,
    "engine": 3,
    "calls": 4,
    "web": 5,
    "litellm": 6,
    "guard": 6,
    "ops": 7,
    "cli": 7,
}
# The package's face, the command's entry point, a test helper, and the module paths of earlier
# releases (re-exports): nothing below imports them.
ENTRANCES = {
    "__init__",
    "__main__",
    "testing",
    "admin",
    "service",
    "metrics",
    "webhooks",
    "simulate",
    "middleware",
    "cli_ledger",
}


def _top_level_imports(path: Path) -> list[str]:
    """Modules of the package that ``path`` imports when it is imported (not inside functions)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        inner = node.body if isinstance(node, ast.If) else [node]  # if TYPE_CHECKING: ...
        for child in inner:
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                "tokenfence_asgi."
            ):
                found.append(child.module or "")
    return found


def test_every_module_is_in_a_layer() -> None:
    tops = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith(".")}
    tops -= {"py.typed", "__pycache__"}
    assert tops - set(LAYERS) - ENTRANCES == set()


def test_imports_run_down_the_layers() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top in ENTRANCES:
            continue
        for module in _top_level_imports(path):
            target = module.split(".")[1]
            if target in ENTRANCES or LAYERS[target] > LAYERS[top]:
                upward.append(f"{path.relative_to(PACKAGE)} -> {module}")
    assert upward == []
