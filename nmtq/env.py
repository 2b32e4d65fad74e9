"""The environment a number was measured in: package versions, CPU (model, vector extensions), threads and GPU.

``environment()`` returns it as a flat JSON-serializable dict, which every ``metrics.json``, ``table.json`` and
benchmark JSON carries under ``"environment"``; ``format_environment`` writes it as ``- key: value`` lines (as
``transformers env`` does, and ``nmtq env`` prints) and ``describe_environment`` as the one line under a table.
The CPU's flags are read from the text of ``/proc/cpuinfo`` by a pure function, ``parse_cpuinfo``, which
:func:`nmtq.ct2_int8.int8_saturates_here` shares. Only the standard library is imported here; torch on use.

Example:
    >>> cpu = parse_cpuinfo("vendor_id\\t: AuthenticAMD\\nmodel name\\t: AMD EPYC 7B13\\nflags\\t\\t: sse2 avx2\\n")
    >>> cpu.model, cpu.avx2, cpu.avx512, cpu.vnni
    ('AMD EPYC 7B13', True, False, False)
    >>> print(format_environment({"torch": "2.5.1", "avx2": True, "gpu": "none"}))
    - torch: 2.5.1
    - avx2: yes
    - gpu: none
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "sacrebleu", "sentencepiece", "ctranslate2",
            "safetensors")
NOT_INSTALLED = "not installed"
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """What ``/proc/cpuinfo`` says about the first processor: its model name, vendor and feature flags."""

    model: str | None
    vendor: str | None
    flags: frozenset[str]

    @property
    def avx2(self) -> bool:
        return "avx2" in self.flags

    @property
    def avx512(self) -> bool:
        """AVX-512 Foundation (``avx512f``), which every AVX-512 CPU has."""
        return "avx512f" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products summed in 32 bits: AVX-512 VNNI or its 256-bit AVX-VNNI."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni"})


def parse_cpuinfo(cpuinfo: str) -> CpuInfo:
    """The first processor's ``model name``, ``vendor_id`` and ``flags`` in the text of ``/proc/cpuinfo``.

    A field that is missing (``model name`` and ``flags`` on ARM, whose flags are ``Features``) reads None or no
    flags.

    Example:
        >>> parse_cpuinfo("processor\\t: 0\\nvendor_id\\t: GenuineIntel\\nflags\\t\\t: avx2 avx512f\\n").vendor
        'GenuineIntel'
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    return CpuInfo(fields.get("model name") or None, fields.get("vendor_id") or None,
                   frozenset(fields.get("flags", "").split()))


def read_cpuinfo() -> str | None:
    """The text of ``/proc/cpuinfo``; None where there is none (macOS, Windows)."""
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def package_version(name: str) -> str:
    """The installed version of the distribution ``name`` (``importlib.metadata``), or ``"not installed"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _gpu() -> dict[str, Any]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    return {"gpu": ", ".join(names) or "none", "gpu_count": count, "cuda": torch.version.cuda or "none"}


def environment(cpuinfo: str | None = None) -> dict[str, Any]:
    """This process's environment as a flat JSON-serializable dict.

    Versions of nmtq, Python and the packages in ``PACKAGES`` (``"not installed"`` for one that is not), the
    platform, the CPU (``cpuinfo`` is the text of ``/proc/cpuinfo``, read when None; the model falls back to
    ``platform.processor()``), its AVX2, AVX-512 and VNNI flags, ``os.cpu_count()``, ``torch.get_num_threads()``,
    the GPUs (``"none"``, count 0 without CUDA) and the CUDA version torch was built with (``"none"`` if not).

    Example:
        >>> environment()["cpu_count"] == os.cpu_count()
        True
    """
    import torch

    from .version import __version__

    cpu = parse_cpuinfo((read_cpuinfo() or "") if cpuinfo is None else cpuinfo)
    nmtq_version = package_version("nmtq")
    return {
        "nmtq": __version__ if nmtq_version == NOT_INSTALLED else nmtq_version,  # a checkout that is not installed
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: package_version(name) for name in PACKAGES},
        "cpu": cpu.model or platform.processor() or platform.machine() or "unknown",
        "cpu_vendor": cpu.vendor or "unknown",
        "avx2": cpu.avx2,
        "avx512": cpu.avx512,
        "vnni": cpu.vnni,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **_gpu(),
    }


def format_environment(env: dict[str, Any]) -> str:
    """``- key: value`` lines, one per entry (booleans as yes/no), to paste into an issue or a report."""
    def text(value: Any) -> str:
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)

    return "\n".join(f"- {key}: {text(value)}" for key, value in env.items())


def describe_environment(env: dict[str, Any]) -> str:
    """The machine and the versions behind a table's numbers, in one line.

    Example:
        >>> describe_environment({"cpu": "AMD EPYC 7B13", "avx2": True, "avx512": False, "vnni": False,
        ...                       "torch_threads": 8, "torch": "2.5.1", "transformers": "4.46.0",
        ...                       "ctranslate2": "4.5.0", "gpu": "none", "gpu_count": 0})
        'AMD EPYC 7B13 (AVX2, no AVX-512, no VNNI), 8 threads, torch 2.5.1, transformers 4.46.0, ctranslate2 4.5.0'
    """
    flags = ", ".join(name if env.get(key) else f"no {name}"
                      for key, name in (("avx2", "AVX2"), ("avx512", "AVX-512"), ("vnni", "VNNI")))
    gpu = f"{env['gpu']} (CUDA {env.get('cuda')}) and " if env.get("gpu_count") else ""
    return (f"{gpu}{env.get('cpu')} ({flags}), {env.get('torch_threads')} threads, torch {env.get('torch')}, "
            f"transformers {env.get('transformers')}, ctranslate2 {env.get('ctranslate2')}")
