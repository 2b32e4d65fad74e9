"""nmtq.files owns the name of every file in a run, export or table folder: no other module spells one."""

import ast
from pathlib import Path

import nmtq
from nmtq import files

OWNED = {value for name, value in vars(files).items()
         if name.isupper() and isinstance(value, str) and ("." in value or value.endswith(("_DIR", "-")))}
OWNED |= {files.DEQUANTIZED_DIR, files.TEACHER_CACHE_DIR, files.CHECKPOINT_PREFIX}  # not "test": a split's name too


def literals(path: Path):
    """The string constants of a module that are not docstrings, with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_only_nmtq_files_spells_the_names_of_run_and_export_files():
    assert {"quantization.json", "quantized.safetensors", "quantizer.json", "metrics.json", "config.json",
            "model.safetensors"} <= OWNED
    root = Path(nmtq.__file__).parent
    spelled = [f"{path.relative_to(root)}:{line}: {value!r}" for path in sorted(root.rglob("*.py"))
               if path.name != "files.py" for line, value in literals(path) if value in OWNED]
    assert spelled == []
