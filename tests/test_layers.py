"""nmtq's modules form layers without cycles (issue #16): a module imports only from its own layer or below.

The import graph is read with ``ast`` from every file of ``nmtq/``; every import counts, those inside functions
included (``from . import files``, ``from .x import y``, ``import nmtq.x``). :data:`LAYERS` is the one table of
which module belongs to which layer; the README's "Layout" section lists the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nmtq"

LAYERS: dict[int, tuple[str, ...]] = {
    # 1. torch-only quantization math, shared by translation and vision
    1: ("nmtq.quant",),
    # 2. the distillation loss, a pure function, and the one error type every layer above raises
    2: ("nmtq.errors", "nmtq.losses"),
    # 3. models, data, tokenizer and the basic utilities everything above builds on
    3: ("nmtq.version", "nmtq.files", "nmtq.io", "nmtq.env", "nmtq.hub", "nmtq.distributed",
        "nmtq.checkpoints", "nmtq.guard", "nmtq.outputs", "nmtq.codes", "nmtq.conventions", "nmtq.data_spec",
        "nmtq.data", "nmtq.tokenizer", "nmtq.vocab", "nmtq.models", "nmtq.lstm", "nmtq.student", "nmtq.decoding",
        "nmtq.exported",
        "nmtq.lstm_cache", "nmtq.vision", "nmtq.vision.data", "nmtq.vision.models"),
    # 4. training: the recipe arguments, the shared run helpers, the trainers, the methods, the teacher cache
    4: ("nmtq.args", "nmtq.runs", "nmtq.train", "nmtq.methods", "nmtq.trainer", "nmtq.teacher_cache",
        "nmtq.distill", "nmtq.vision.train"),
    # 5. evaluation: the Translator interface, its transformers and CTranslate2 engines, and the scores; the
    #    CTranslate2 conversion sits with its translator, which converts a model folder on the fly
    5: ("nmtq.translators", "nmtq.shortlist", "nmtq.ct2_int8", "nmtq.ct2", "nmtq.evaluation"),
    # 6. export and the Hub: writing exports, model cards, pushing; ``import nmtq`` registers the export's
    #    quantization method (nmtq.hf) with transformers
    6: ("nmtq.export", "nmtq.card", "nmtq.push", "nmtq.hf", "nmtq"),
    # 7. workflows: the training commands, which end by scoring the test split (evaluation), and the table
    7: ("nmtq.commands", "nmtq.table"),
    # 8. the command line
    8: ("nmtq.cli", "nmtq.__main__"),
}



def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]):
    """``(imported module, names taken from it)`` for every import in the file, functions included."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule, ()) if submodule in known else (base, (alias.name,))


def _owner(name: str, known: set[str]) -> str | None:
    """The nmtq module that ``name`` names, or the nearest package above it; None outside nmtq."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """The modules each module imports, and the names each takes from another."""
    found = modules(root)
    known = set(found)
    graph: dict[str, set[str]] = {name: set() for name in found}
    names: dict[tuple[str, str], set[str]] = {}
    for name, path in found.items():
        for imported, taken in _imports(name, path, known):
            target = _owner(imported, known)
            if target is not None and target != name:
                graph[name].add(target)
                names.setdefault((name, target), set()).update(taken)
    return graph, names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_of() -> dict[str, int]:
    table = {}
    for layer, names in LAYERS.items():
        for name in names:
            assert name not in table, f"{name} is in layers {table[name]} and {layer}"
            table[name] = layer
    return table


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> set[tuple[str, str]]:
    return {(source, target) for source, targets in graph.items() for target in targets
            if layers[target] > layers[source]}


def _layer(name: str, layers: dict[str, int]) -> int:
    """A module's layer: its own entry, else its package's (every nmtq.quant.* is layer 1)."""
    owner = name
    while owner not in layers and "." in owner:
        owner = owner.rpartition(".")[0]
    return layers[owner]


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from . import a\n")
    (root / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text("from ..a import f\nimport pkg.sub\n")
    graph, _ = import_graph(root)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a", "pkg.sub"}}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_nmtq_has_no_import_cycle():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_every_module_has_a_layer():
    layers = layer_of()
    missing = sorted(name for name in modules() if not name.startswith("nmtq.quant.") and name not in layers)
    assert missing == [], f"add these modules to LAYERS (and the README's Layout): {missing}"
    assert not sorted(set(layers) - set(modules())), "LAYERS names a module that does not exist"


def test_each_module_imports_only_from_its_layer_or_below():
    graph, _ = import_graph()
    layers = layer_of()
    full = {name: _layer(name, layers) for name in graph}
    wrong = sorted(f"{s} (layer {full[s]}) imports {t} (layer {full[t]})" for s, t in upward_imports(graph, full))
    assert wrong == []


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_layer_names_its_modules_once(layer):
    assert len(set(LAYERS[layer])) == len(LAYERS[layer])


def test_private_names_stay_in_their_module():
    _, names = import_graph()
    crossing = {pair: sorted(n for n in taken if n.startswith("_") and not n.startswith("__"))
                for pair, taken in names.items()}
    assert {pair: taken for pair, taken in crossing.items() if taken} == {}


def test_the_readme_layout_lists_every_module():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("\n## ")] if "\n## " in layout else layout
    paths = {str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
             if "quant" not in path.parts and path.name != "__init__.py" or path.parent == PACKAGE}
    missing = sorted(path for path in paths if f"`{path}`" not in layout)
    assert missing == [], f"add these modules to the README's Layout, with their layer: {missing}"
    assert "`nmtq/quant/`" in layout
