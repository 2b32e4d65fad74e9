"""The name of every file nmtq writes or reads in a run, export or table directory: one place, every module uses it.

A run directory (the ``output_dir`` of ``nmtq train``, ``nmtq distill`` or ``nmtq distill-images``)::

    config.json, generation_config.json, model.safetensors    the model, as transformers saves it
    tokenizer_config.json and the other tokenizer files        (translation runs; the others are named by
                                                                nmtq.tokenizer and nmtq.vocab, which rewrite them)
    quantization.json                                           the quantizer's settings and layers (quantized runs)
    quantized.safetensors                                       the exact integer codes that were scored
    trimmed_vocabulary.json                                     the kept ids of a trimmed vocabulary
    test/metrics.json, test/hypotheses.txt                      the scores on the test split
    table-run.json                                              the wall time of the run, for ``nmtq table``
    checkpoint-<step>/                                          the Trainer's checkpoints (trainer_state.json
                                                                written last), with quantizer.json and
                                                                quantizer-masks.safetensors for quantized runs

``nmtq evaluate`` writes metrics.json and hypotheses.txt into its ``--output-dir``, by default ``eval-<split>/`` in
the model's directory, as a run does into test/.

A table directory (the ``output_dir`` of ``nmtq table``) holds table.json, table.md, ``<metric>-vs-bytes.png``
and one run directory per student and method (``<student>/kd``, ``<student>/qd4``, ...). Beside the run
directories of ``nmtq distill`` (in the table directory, for a table), ``teacher-cache/`` holds one folder per
teacher, data and settings, each with meta.json and its shards (named by :mod:`nmtq.teacher_cache`).

An export directory (``nmtq export``, or ``save_pretrained`` of a model loaded from one) holds config.json, whose
``quantization_config`` says how the codes are stored, generation_config.json, model.safetensors (the codes in the
format of :mod:`nmtq.codes`), README.md, the tokenizer files and, with ``--dequantize``, ``dequantized/``. A
CTranslate2 folder (``nmtq export --ctranslate2``) holds CTranslate2's model.bin and config.json, the tokenizer
files and nmtq_ct2.json (what decoding needs besides the model).

Example:
    >>> checkpoint_dir("runs/student", 40).as_posix()
    'runs/student/checkpoint-40'
    >>> metrics_file("runs/student").as_posix()
    'runs/student/test/metrics.json'
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = "pytorch_model.bin"  # never loaded: only recognised, to refuse it or to protect it
TRAINER_STATE = "trainer_state.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # every saved tokenizer has one: it marks a folder that holds one

QUANTIZATION = "quantization.json"
CODES = "quantized.safetensors"
QUANTIZER_STATE = "quantizer.json"
MASKS = "quantizer-masks.safetensors"
TRIMMED_VOCABULARY = "trimmed_vocabulary.json"

TEST_DIR = "test"
EVALUATION_PREFIX = "eval-"
METRICS = "metrics.json"
HYPOTHESES = "hypotheses.txt"
RUN_TIME = "table-run.json"

TABLE_JSON = "table.json"
TABLE_MD = "table.md"
PLOT_SUFFIX = "-vs-bytes.png"

EXPORT_CONFIG = "quantization_config.json"  # only read: the first exports kept it beside config.json
MODEL_CARD = "README.md"
DEQUANTIZED_DIR = "dequantized"
CT2_INFO = "nmtq_ct2.json"
CT2_WEIGHTS = "model.bin"  # CTranslate2's own: a folder with it is a converted model
CT2_VMAP = "vmap.txt"  # CTranslate2's own name for a vocabulary map (a lexical shortlist, nmtq.shortlist)

TEACHER_CACHE_DIR = "teacher-cache"
TEACHER_CACHE_META = "meta.json"
CHECKPOINT_PREFIX = "checkpoint-"

MODEL_FILES = (CONFIG, WEIGHTS, WEIGHTS_INDEX, PICKLED_WEIGHTS, CODES)
"""The files that make a directory hold a model: a run never writes over them unless it made them."""


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """``output_dir/checkpoint-<step>``, as the Trainer names it."""
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``output_dir``, oldest step first; [] if ``output_dir`` is no folder."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    steps = [(int(p.name[len(CHECKPOINT_PREFIX):]), p) for p in directory.glob(f"{CHECKPOINT_PREFIX}*")
             if p.name[len(CHECKPOINT_PREFIX):].isdigit() and p.is_dir()]
    return [path for _, path in sorted(steps)]


def metrics_file(output_dir: str | os.PathLike) -> Path:
    """``output_dir/test/metrics.json``: the scores a run wrote for its test split."""
    return Path(output_dir) / TEST_DIR / METRICS


def evaluation_dir(model_dir: str | os.PathLike, split: str) -> Path:
    """``model_dir/eval-<split>``: where ``nmtq evaluate`` writes its files unless told otherwise."""
    return Path(model_dir) / f"{EVALUATION_PREFIX}{split}"


def plot_file(table_dir: str | os.PathLike, metric: str) -> Path:
    """``table_dir/<metric>-vs-bytes.png``: the plot of ``nmtq table`` (``bleu``, ``accuracy``)."""
    return Path(table_dir) / f"{metric}{PLOT_SUFFIX}"
