"""The int8 codes nmtq writes for CTranslate2: as wide as the CPU the model runs on multiplies exactly.

CTranslate2's int8 matrix products sum pairs of 8-bit products in 16 bits, with saturation, where it runs
oneDNN's u8s8 kernel without VNNI (x86 CPUs with AVX2 not made by Intel, before VNNI); there 7-bit codes keep
every sum in range (2 x 255 x 63 < 32,767). Intel's CPUs (MKL) and any CPU with VNNI sum in 32 bits, so 8-bit
codes are exact. :func:`int8_width` chooses the bits for a kind of CPU (:data:`INT8_TARGETS`),
:func:`int8_codes` writes them into a CTranslate2 model spec, and :func:`warn_if_saturated` warns where a folder
runs on a CPU that can saturate its codes.

Example:
    >>> int8_width(None, None, "avx2"), int8_width(None, 4, "vnni")
    (7, 4)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from . import files
from .env import parse_cpuinfo, read_cpuinfo
from .errors import NmtqError
from .io import read_json_object
from .quant.functional import encode_tensor, max_code

logger = logging.getLogger(__name__)

# the CPU a CTranslate2 int8 model will run on -> the widest codes its int8 kernels multiply exactly ("here": this
# machine's, by int8_saturates_here)
INT8_TARGETS = {"vnni": 8, "avx2": 7}
TARGET_CPUS = ("here", *INT8_TARGETS)


def student_int8_bits(model_dir: str | os.PathLike) -> int | None:
    """The bits of a student whose codes CTranslate2 int8 can hold exactly, else None.

    That is a student quantized with absmax per output row (``--bucket_size row --scaling absmax``), uniform
    levels (no learned points) and at most 8 bits, read from its ``quantization.json`` (``nmtq distill``) or
    config.json's ``quantization_config`` (``nmtq export``); with bits that differ between layers, the largest.
    """
    from .exported import export_config

    model_dir = Path(model_dir)
    data, config = export_config(model_dir), None
    if data is not None:
        config = data
    elif (model_dir / files.QUANTIZATION).is_file():
        data = read_json_object(model_dir / files.QUANTIZATION,
                                "write the folder again with the nmtq command that made it")
        config = data.get("config") or {}
    if config is None:
        return None
    bits = list((data.get("bits") or {}).values())
    if (config.get("bucket_size") == "row" and config.get("scaling") == "absmax" and bits
            and not (config.get("learn_points") or data.get("learn_points")) and max(bits) <= 8):
        return int(max(bits))
    return None


def int8_saturates_here(cpuinfo: str | None = None) -> bool:
    """Whether CTranslate2's int8 on this CPU sums pairs of 8-bit products in 16 bits, which 8-bit codes can overflow.

    That is oneDNN's u8s8 kernel without VNNI: CTranslate2 takes oneDNN on x86 CPUs not made by Intel (MKL on
    Intel's, or wherever ``CT2_USE_MKL=1``), and CPUs with ``avx512_vnni`` or ``avx_vnni`` sum in 32 bits.
    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when None; False where there is none).
    """
    if os.environ.get("CT2_USE_MKL", "").lower() in ("1", "true", "on"):
        return False
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
        if cpuinfo is None:
            return False
    cpu = parse_cpuinfo(cpuinfo)
    return cpu.avx2 and cpu.vendor != "GenuineIntel" and not cpu.vnni


def int8_target(target_cpu: str) -> str:
    """``target_cpu`` (one of :data:`TARGET_CPUS`) as a key of :data:`INT8_TARGETS`: ``"here"`` is this machine's
    kind, ``"avx2"`` where :func:`int8_saturates_here`, else ``"vnni"``."""
    if target_cpu not in TARGET_CPUS:
        raise NmtqError(f"target_cpu={target_cpu!r}: pass one of {TARGET_CPUS} (here: this machine; vnni: Intel's "
                         "CPUs or any with VNNI, 8-bit codes; avx2: x86 CPUs without VNNI, 7-bit codes)")
    if target_cpu == "here":
        return "avx2" if int8_saturates_here() else "vnni"
    return target_cpu


def int8_width(int8_bits: int | None, own: int | None, target: str) -> int:
    """The bits of the int8 codes for a CPU of kind ``target`` (a key of :data:`INT8_TARGETS`): ``int8_bits`` when
    given (with a warning where that CPU can saturate them), else the student's ``own`` bits where that CPU
    multiplies them exactly, else the widest it does (``own`` re-rounded to it, with a warning)."""
    widest = INT8_TARGETS[target]
    if int8_bits is not None:
        if int8_bits > widest:
            logger.warning("%d-bit int8 codes can saturate CTranslate2's int8 kernels on %s CPUs (pairs of products "
                           "summed in 16 bits): %d bits keep them exact there", int8_bits, target, widest)
        return int8_bits
    if own is not None and own > widest:
        logger.warning("the student's own %d-bit codes can saturate CTranslate2's int8 kernels on %s CPUs: they are "
                       "rounded again to %d bits (distill with --bits %d to keep the codes it trained through, or "
                       "pass --int8-bits %d to keep them anyway)", own, target, widest, widest, own)
    return min(own or widest, widest)


def int8_codes(spec, bits: int, rest: str | None) -> None:
    """Every weight CTranslate2 stores as int8 (those with a ``<name>_scale``) as ``bits``-bit absmax codes per
    output row, rounded as nmtq rounds them, with CTranslate2's scale (codes per unit); other float tensors as
    ``rest`` (what CTranslate2's int8_float16 etc. do to them), or left as they are."""
    from ctranslate2.specs import model_spec as ms

    top = max_code(bits, "absmax")

    def visit(layer, name: str, value) -> None:
        if not isinstance(value, ms.Variable) or value.is_scalar():
            return
        key = name.rsplit("/", 1)[-1]
        if hasattr(layer, f"{key}_scale"):
            q = encode_tensor(torch.from_numpy(value.to("float32").numpy()), bits, "row", "absmax")
            codes = (q.codes.to(torch.int16) - top).to(torch.int8).reshape(q.shape)  # stored offset by top
            amax = q.ranges.reshape(-1)
            scale = torch.where(amax > 0, top / amax, torch.ones_like(amax))  # a zero row: codes 0, any scale
            setattr(layer, key, ms.NumpyVariable(codes.numpy()))
            setattr(layer, f"{key}_scale", ms.NumpyVariable(scale.numpy()))
        elif rest is not None and value.dtype in ("float32", "float16", "bfloat16"):
            setattr(layer, key, value.to(rest))

    ms.visit_spec(spec, visit)


def warn_if_saturated(model_dir: str | os.PathLike, bits: int | None) -> None:
    """Log a warning where the int8 codes of the CTranslate2 folder ``model_dir`` (``bits`` wide) can saturate this
    CPU's int8 kernels, which CTranslate2 multiplies them with."""
    if bits is not None and bits > INT8_TARGETS["avx2"] and int8_saturates_here():
        logger.warning("%s holds %d-bit int8 codes, made for CPUs that sum int8 products in 32 bits; this CPU (x86 "
                       "without VNNI) sums pairs of them in 16 bits, which they can saturate: convert it again here "
                       "(nmtq export --ctranslate2 --target-cpu here) for exact 7-bit codes", model_dir, bits)
