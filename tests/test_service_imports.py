"""Services meet only on the bus: no package under services/ imports another one, and shared/ imports none.

One edge is allowed: the `sluice` CLI runs the optimization pipeline
(`services/modelops`: fine-tuning, quantization, evaluation, the cost model)
in the operator's own process. modelops is a library of offline jobs, not a
service on the bus, so nothing meets it there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.settings import REPO_ROOT

SERVICES_DIR = REPO_ROOT / "services"
SHARED_DIR = REPO_ROOT / "shared"
PACKAGES = sorted(path.name for path in SERVICES_DIR.iterdir() if (path / "__init__.py").is_file())
# Package -> the other service packages it may import.
ALLOWED_IMPORTS = {"cli": {"services.modelops"}}


def imported_modules(path: Path) -> set[str]:
    """Return the absolute module names that `path` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def service_imports(paths: list[Path]) -> set[str]:
    """Return the `services.<package>` prefixes that the files import."""
    return {".".join(name.split(".")[:2]) for path in paths for name in imported_modules(path) if name.startswith("services.")}


def test_packages_found() -> None:
    # Guards the checks below against a wrong folder, which would pass nothing.
    assert {"ingress", "drift", "telemetry"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_service_imports_only_itself(package: str) -> None:
    allowed = {f"services.{package}"} | ALLOWED_IMPORTS.get(package, set())
    others = service_imports(sorted((SERVICES_DIR / package).rglob("*.py"))) - allowed

    assert others == set(), f"services/{package} imports {sorted(others)}; move what they share to shared/"


def test_shared_imports_no_service() -> None:
    assert service_imports(sorted(SHARED_DIR.rglob("*.py"))) == set()
