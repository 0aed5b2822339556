"""Dependencies run one way: every `import` of every module, read from the source (inside
functions and under TYPE_CHECKING too), against the rules; and the service started in an
interpreter where TensorFlow and the training package cannot be imported at all."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("curatornet", "service", "training", "benchmarks", "tests")
# What each package may import from the others (its own modules aside).
ALLOWED = {
    "curatornet": set(),
    "service": {"curatornet"},
    "training": {"curatornet"},
    "benchmarks": {"curatornet", "service", "training"},
    "tests": {"curatornet", "service", "training"},
}
# The shared package runs in the service: besides the standard library, only these.
SHARED_THIRD_PARTY = {"numpy", "PIL", "onnxruntime"}
HEAVY = {"tensorflow", "keras", "torch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports: `from a.b import c` is a.b.c when that is a module."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_the_walk_sees_every_package_and_the_imports_inside_functions(
    graph: dict[str, set[str]],
) -> None:
    assert {name.split(".")[0] for name in graph} == set(PACKAGES)
    assert "curatornet.model_loader" in graph["service.config"]
    assert "training.pipeline" in graph["training.cli"]  # imported inside a function


def test_packages_import_only_what_they_may(graph: dict[str, set[str]]) -> None:
    forbidden = []
    for name, imported in graph.items():
        package = name.split(".")[0]
        for target in imported:
            top = target.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                forbidden.append(f"{name} imports {target}")
            if package in ("curatornet", "service") and top in HEAVY:
                forbidden.append(f"{name} imports {target}")
            outside = top not in (*PACKAGES, *sys.stdlib_module_names, *SHARED_THIRD_PARTY)
            if package == "curatornet" and outside:
                forbidden.append(f"{name} imports {target}, not numpy/Pillow/ONNX Runtime")
    assert not forbidden, "\n".join(sorted(forbidden))


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(edges).prepare()
    except CycleError as error:
        return list(error.args[1])
    return None


def test_no_module_imports_itself_through_others(graph: dict[str, set[str]]) -> None:
    edges = {
        name: {t for t in imported if t in graph and t != name} for name, imported in graph.items()
    }
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_no_two_packages_import_each_other(graph: dict[str, set[str]]) -> None:
    edges: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for name, imported in graph.items():
        for target in imported:
            if target.split(".")[0] in PACKAGES and target.split(".")[0] != name.split(".")[0]:
                edges[name.split(".")[0]].add(target.split(".")[0])
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_a_cycle_and_a_forbidden_import_would_be_found(tmp_path: Path) -> None:
    """The walk itself, on a made-up package: a test that cannot fail proves nothing."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text("from . import a\nimport training.model\n")
    known = {"pkg", "pkg.a", "pkg.b"}
    edges = {
        name: imports_of(name, tmp_path / (name.replace(".", "/") + ".py"), known)
        for name in ("pkg.a", "pkg.b")
    }
    assert edges["pkg.b"] == {"pkg.a", "training.model"}
    assert _cycle({n: {t for t in e if t in known} for n, e in edges.items()}) is not None


BLOCKER = """
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    # As in the service's image: no TensorFlow, Keras or torch installed, no training/ copied.
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"tensorflow", "keras", "torch", "training"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Absent())
"""


def test_the_service_runs_without_tensorflow_or_training(tmp_path: Path) -> None:
    """Every service module imports, the app starts and loads the shipped model with its image
    encoder, takes a picture, and the demo loads its market, with those imports refused."""
    script = BLOCKER + textwrap.dedent(
        f"""
        import importlib, io, pkgutil
        from pathlib import Path

        try:
            import tensorflow
        except ModuleNotFoundError:
            pass
        else:
            sys.exit("the blocker does not block")

        import service
        for module in pkgutil.walk_packages(service.__path__, "service."):
            importlib.import_module(module.name)

        from fastapi.testclient import TestClient
        from PIL import Image

        from service.app import create_app
        from service.config import Settings

        settings = Settings(
            model_dir=Path({str(ROOT / "models" / "default")!r}),
            store_url="sqlite:///{tmp_path / "store.db"}",
        )
        picture = io.BytesIO()
        Image.new("RGB", (300, 200), (200, 120, 40)).save(picture, "JPEG")
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").status_code == 200
            files = {{"image": ("work.jpg", picture.getvalue(), "image/jpeg")}}
            form = {{"id": "w", "artist_id": "a"}}
            response = client.post("/items", data=form, files=files)
            assert response.status_code == 200, response.text

        from curatornet.model_loader import load_model
        from service.demo import load_demo_market
        from service.index import ItemIndex
        from service.indexing import CatalogueIndex
        from service.stores import open_store

        store = open_store("sqlite:///{tmp_path / "demo.db"}")
        catalogue = CatalogueIndex(store, ItemIndex)
        catalogue.switch_model(load_model({str(ROOT / "models" / "synthetic-2048")!r}))
        load_demo_market(store, catalogue, Path({str(tmp_path / "demo")!r}), scale=0.01)
        assert store.counts().items > 0
        assert not any(name.split(".")[0] in ("tensorflow", "training") for name in sys.modules)
        print("served without tensorflow")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "served without tensorflow" in result.stdout
