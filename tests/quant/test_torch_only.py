"""nmtq.quant must stay torch-only so the vision and translation trainers can share it, and so it works where
transformers is not installed (``import nmtq`` registers nmtq's models with transformers only where it is)."""

import re
import subprocess
import sys
from pathlib import Path

QUANT = Path(__file__).resolve().parents[2] / "nmtq" / "quant"


def test_nmtq_quant_imports_no_training_library():
    pattern = re.compile(r"^\s*(from|import)\s+(transformers|datasets|accelerate)\b|^\s*from\s+\.\.(?!quant)",
                         re.MULTILINE)
    offenders = [p.name for p in QUANT.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_nmtq_quant_works_without_transformers_installed():
    code = ("import sys\n"
            "for name in ('transformers', 'datasets', 'accelerate'):\n"
            "    sys.modules[name] = None  # as if not installed: importing it raises ImportError\n"
            "import torch, nmtq.quant as q\n"
            "print(q.encode_tensor(torch.linspace(-1, 1, 16), bits=2).codes.unique().tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 1, 2, 3]"
