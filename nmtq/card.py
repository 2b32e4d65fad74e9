"""The model card (README.md) of an exported student: Hub metadata as YAML front matter, then what the model is.

The front matter is written by ``huggingface_hub.ModelCardData``, so ``model-index`` has the shape the Hub and
``huggingface_hub.ModelCard`` expect. The body gives the method, teacher, bits, bytes and compression ratios
from the same size accounting as the training logs (:mod:`nmtq.quant.size`).

Example:
    >>> import torch
    >>> from nmtq.quant import encode_tensor, size_report
    >>> size = size_report({"w": encode_tensor(torch.randn(256), bits=4)}, {})
    >>> text = model_card(CardFacts(name="de-en-qd4", languages=["de", "en"], method="qd", teacher="runs/teacher",
    ...                             dataset="bible", bits={"w": 4}, bucket_size=256, scaling="linear", size=size,
    ...                             file_bytes=300, storage="packed", metrics={"bleu": 20.0, "chrf": 45.0}))
    >>> text.startswith("---") and "model-index" in text and "library_name: nmtq" in text
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import files
from .quant import SizeReport

METHODS = {"ptq": "post-training quantization of a distilled student",
           "qd": "quantized distillation (Polino et al., 2018): distillation through fake-quantized weights",
           "dq": "differentiable quantization (Polino et al., 2018): quantization points learned by distillation"}
RESULTS = (("bleu", "BLEU"), ("chrf", "chrF"), ("perplexity", "Perplexity"))
IMAGE_RESULTS = (("accuracy", "Accuracy"),)  # top-1, percent


@dataclass(frozen=True)
class CardFacts:
    """What the card says about one exported student; ``None`` where it is not known."""

    name: str
    languages: Sequence[str]
    method: str | None
    teacher: str | None
    dataset: str | None
    bits: Mapping[str, int]  # bits per quantized tensor
    bucket_size: int | str | None
    scaling: str
    size: SizeReport
    file_bytes: int
    storage: str  # "packed" or "huffman"
    metrics: Mapping[str, object] | None = None  # MODEL_DIR/test/metrics.json
    sparsity: float = 0.0
    notes: Sequence[str] = field(default_factory=tuple)
    task: str = "translation"  # or "image-classification"

    @property
    def results(self) -> tuple[tuple[str, str], ...]:
        return IMAGE_RESULTS if self.task == "image-classification" else RESULTS


def _bits_text(bits: Mapping[str, int]) -> str:
    values = sorted(set(bits.values()))
    if len(values) == 1:
        return f"{values[0]} bits per weight ({len(bits)} tensors)"
    mean = sum(bits.values()) / len(bits)
    return f"{values[0]} to {values[-1]} bits per tensor (mean {mean:.2f}, {len(bits)} tensors)"


def _metadata(facts: CardFacts) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    metrics = facts.metrics or {}
    dataset = facts.dataset or "held-out test split"
    task_name = facts.task.replace("-", " ").capitalize()
    results = [EvalResult(task_type=facts.task, task_name=task_name, dataset_type=facts.dataset or "custom",
                          dataset_name=dataset, dataset_split="test", metric_type=key, metric_name=label,
                          metric_value=round(float(metrics[key]), 2))
               for key, label in facts.results if isinstance(metrics.get(key), int | float)]
    tags = [facts.task, "nmtq", "quantized", "knowledge-distillation", f"{max(facts.bits.values())}-bit"]
    data = ModelCardData(library_name="nmtq", pipeline_tag=facts.task, tags=tags,
                         language=list(facts.languages) or None, model_name=facts.name,
                         eval_results=results or None)
    return data.to_yaml()


def _size_lines(facts: CardFacts) -> list[str]:
    size, metrics = facts.size, facts.metrics or {}
    lines = [f"| size (accounting, packed) | {size.total_bytes:,} bytes ({size.compression_ratio:.2f}x smaller than "
             f"this model in fp32, {size.fp32_bytes:,} bytes) |",
             f"| size (accounting, Huffman) | {size.total_huffman_bytes:,} bytes "
             f"({size.huffman_compression_ratio:.2f}x) |",
             f"| {files.WEIGHTS} | {facts.file_bytes:,} bytes ({facts.storage} codes; the rest is the safetensors "
             "header: key names, shapes, metadata) |"]
    if metrics.get("ratio_vs_fp32_teacher"):
        lines.append(f"| compression vs the fp32 teacher | {metrics['ratio_vs_fp32_teacher']}x "
                     f"({metrics.get('teacher_fp32_bytes', 0):,} bytes) |")
    return lines


def _results(facts: CardFacts) -> list[str]:
    metrics = facts.metrics or {}
    found = [(label, metrics[key]) for key, label in facts.results if isinstance(metrics.get(key), int | float)]
    if not found:
        return [f"No test metrics were found (MODEL_DIR/{files.TEST_DIR}/{files.METRICS})."]
    what = (f"{metrics.get('examples', '?')} images, top-1 %" if facts.task == "image-classification" else
            f"{metrics.get('num_sentences', '?')} sentences, beam {metrics.get('num_beams', '?')}")
    lines = [f"On the test split of {facts.dataset or 'the training corpus'} ({what}):", "",
             "| metric | value |", "|---|---|", *(f"| {label} | {float(v):.2f} |" for label, v in found)]
    for key in ("bleu_signature", "chrf_signature"):
        if metrics.get(key):
            lines.append(f"\nsacreBLEU {key.split('_')[0]} signature: `{metrics[key]}`")
    return lines


def _use(facts: CardFacts) -> list[str]:
    register = 'import nmtq  # registers the quantization method "nmtq" with transformers (pip install nmtq)'
    if facts.task == "image-classification":
        return ["```python", register, "from transformers import AutoModelForImageClassification", "",
                'model = AutoModelForImageClassification.from_pretrained("HUB_ID_OR_FOLDER")',
                "print(model(pixel_values=images).logits.argmax(-1))  # pixels in [0, 1], (batch, channels, H, W)",
                "```"]
    return ["```python", register, "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer", "",
            'model = AutoModelForSeq2SeqLM.from_pretrained("HUB_ID_OR_FOLDER")',
            'tokenizer = AutoTokenizer.from_pretrained("HUB_ID_OR_FOLDER")',
            'batch = tokenizer(["..."], return_tensors="pt")',
            "print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))", "```"]


def model_card(facts: CardFacts) -> str:
    """README.md text: YAML front matter (``library_name: nmtq``, tags, languages, ``model-index``), then prose."""
    method = METHODS.get(facts.method or "", facts.method or "quantization (method not recorded)")
    what = ("An image classifier" if facts.task == "image-classification" else
            f"A shallow {'-'.join(facts.languages) or 'translation'} translation student")
    body = [
        f"# {facts.name}", "",
        f"{what} distilled from a larger teacher and quantized with nmtq.", "",
        "| | |", "|---|---|",
        f"| method | {facts.method or 'unknown'}: {method} |",
        f"| teacher | {facts.teacher or 'not recorded'} |",
        f"| bits | {_bits_text(facts.bits)}; bucket size {facts.bucket_size}, {facts.scaling} scaling |",
        f"| sparsity | {facts.sparsity:.1%} of the quantized weights pruned |",
        *_size_lines(facts), "",
        "## Results", "", *_results(facts), "",
        "## Use", "",
        *_use(facts), "",
        f"`{files.WEIGHTS}` holds the integer codes bit-packed (or Huffman-coded), the per-bucket ranges, learned "
        "points and pruning masks, and every other tensor at its own dtype; the `quantization_config` of "
        f"`{files.CONFIG}` says how they are stored. `from_pretrained` after `import nmtq` (or "
        "`nmtq.exported.load_exported`) decodes them into exactly the weights the student was scored with; without "
        "nmtq, transformers refuses the folder rather than load it with random weights.",
        *(f"\n{note}" for note in facts.notes), "",
    ]
    return f"---\n{_metadata(facts)}\n---\n\n" + "\n".join(body)
