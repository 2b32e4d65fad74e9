"""nmtq.quant must stay torch-only so the vision and translation trainers can share it."""

import subprocess
import sys


def test_importing_nmtq_quant_does_not_import_transformers():
    code = "import sys, nmtq.quant; bad = {'transformers', 'datasets', 'accelerate'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"
