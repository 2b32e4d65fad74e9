"""Teacher outputs computed once and kept on disk in shards, so students train without re-running the teacher.

Two caches, each a directory named by a fingerprint of everything its content depends on (the teacher's weights,
the training examples and the settings), so a changed teacher or corpus never reads a stale cache:

* **sequence-level KD** (Kim & Rush, 2016): the teacher's beam-search translation of every training source,
  ``seq-NNNNN.jsonl``; students then learn from these outputs instead of (or besides) the references;
* **top-k logits** (Apprentice's scheme B, Mishra & Marr, 2018): for every target token of every training pair,
  the teacher's ``k`` most likely tokens and their log-probabilities, ``topk-NNNNN.safetensors``; read back
  lazily (memory-mapped), a shard at a time.

:class:`DistillationCollator` puts them into a student's batches, beside the padded references.

Every shard is written atomically, so a run killed mid-way keeps the shards it finished and the next run
computes only the rest. With several processes each computes every ``num_processes``-th shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import files
from .errors import NmtqError
from .io import atomic_path, sweep_temporary_files, write_json_atomic, write_text_atomic
from .losses import TopK, top_k
from .models import decoder_inputs_from_labels

logger = logging.getLogger(__name__)


def _json_value(value: Any) -> Any:
    """Whole sequences for what JSON lacks (a datasets ``Column``, a tuple of tensors), else ``str``: a column's
    ``str`` shows its first five items only, so two corpora that begin alike would share a fingerprint."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
        return list(value)
    return str(value)


def fingerprint(*parts: Any) -> str:
    """A short hex digest of JSON-able ``parts`` (lists of token ids included).

    Example:
        >>> fingerprint("a", [1, 2]) == fingerprint("a", [1, 2]) != fingerprint("a", [2, 1])
        True
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=_json_value).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def teacher_fingerprint(name_or_path: str) -> str:
    """Digest of a local teacher's config and weight files, or of a Hub id (its files are pinned by the Hub)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return fingerprint(name_or_path)
    digest = hashlib.sha256()
    for file in sorted([path / files.CONFIG, *path.glob("*.safetensors")]):
        if file.is_file():
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class _Shards:
    """A cache directory of ``{prefix}-NNNNN{suffix}`` shards of ``shard_size`` examples each."""

    def __init__(self, directory: Path, prefix: str, suffix: str, num_examples: int, shard_size: int,
                 meta: dict) -> None:
        if shard_size < 1:
            raise NmtqError(f"cache_shard_size={shard_size}: pass a positive number of examples per shard")
        self.directory, self.prefix, self.suffix = Path(directory), prefix, suffix
        self.num_examples, self.shard_size = num_examples, shard_size
        self.count = math.ceil(num_examples / shard_size)
        self.meta = {**meta, "num_examples": num_examples, "shard_size": shard_size}

    def path(self, shard: int) -> Path:
        return self.directory / f"{self.prefix}-{shard:05d}{self.suffix}"

    def span(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_examples))

    def fill(self, compute: Callable[[int], None], process_index: int, num_processes: int,
             wait: Callable[[], None]) -> None:
        """Compute this process's missing shards, then wait until every process has written its own."""
        todo = [i for i in range(self.count) if i % num_processes == process_index and not self.path(i).is_file()]
        if process_index == 0:
            sweep_temporary_files(self.directory)  # the shards a killed run was writing
            write_json_atomic(self.directory / files.TEACHER_CACHE_META, self.meta)
            done = sum(self.path(i).is_file() for i in range(self.count))
            logger.info(f"teacher cache {self.directory}: {done} of {self.count} {self.prefix} shards present")
        for shard in todo:
            compute(shard)
        wait()
        missing = [str(self.path(i)) for i in range(self.count) if not self.path(i).is_file()]
        if missing:
            raise RuntimeError(f"teacher cache shards missing after every process finished: {missing[:3]}; "
                               "another run may be writing the same cache: run again once it stops")


def cache_translations(teacher, tokenizer, sources: Sequence[str], directory: str | Path, *, num_beams: int,
                       max_new_tokens: int, batch_size: int, shard_size: int = 2048, process_index: int = 0,
                       num_processes: int = 1, wait: Callable[[], None] = lambda: None) -> list[str]:
    """The teacher's beam-search translation of each source, computed once into ``directory`` and read back."""
    from .decoding import translate

    shards = _Shards(Path(directory), "seq", ".jsonl", len(sources), shard_size,
                     {"kind": "translations", "num_beams": num_beams, "max_new_tokens": max_new_tokens})

    def compute(shard: int) -> None:
        span = shards.span(shard)
        outputs = translate(teacher, tokenizer, [sources[i] for i in span], num_beams=num_beams,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, progress=process_index == 0)
        write_text_atomic(shards.path(shard), "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in outputs))

    shards.fill(compute, process_index, num_processes, wait)
    translations: list[str] = []
    for shard in range(shards.count):
        lines = shards.path(shard).read_text(encoding="utf-8").splitlines()
        if len(lines) != len(shards.span(shard)):
            raise NmtqError(f"{shards.path(shard)} holds {len(lines)} translations, expected "
                             f"{len(shards.span(shard))}: delete it and run again to recompute it")
        translations.extend(json.loads(line) for line in lines)
    return translations


class TopKCache:
    """Read-only view of cached top-k teacher outputs: ``cache[i]`` is example ``i``'s :class:`TopK`.

    Shards are opened memory-mapped on first use, so a cache larger than memory is fine.
    """

    def __init__(self, shards: _Shards) -> None:
        self.shards, self._open = shards, {}
        self.k = shards.meta["k"]

    def __len__(self) -> int:
        return self.shards.num_examples

    def _shard(self, shard: int):
        if shard not in self._open:
            from safetensors import safe_open

            handle = safe_open(str(self.shards.path(shard)), framework="pt")
            lengths = handle.get_tensor("lengths")
            if len(lengths) != len(self.shards.span(shard)):
                raise NmtqError(f"{self.shards.path(shard)} holds {len(lengths)} examples, expected "
                                 f"{len(self.shards.span(shard))}: delete it and run again to recompute it")
            offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).tolist()
            self._open[shard] = (handle, offsets)
        return self._open[shard]

    def __getitem__(self, index: int) -> TopK:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} is not in the teacher cache of {len(self)} examples")
        shard, row = divmod(index, self.shards.shard_size)
        handle, offsets = self._shard(shard)
        start, stop = offsets[row], offsets[row + 1]
        return TopK(handle.get_slice("ids")[start:stop], handle.get_slice("log_probs")[start:stop])


def cache_top_k(teacher, rows: Sequence[dict], collate: Callable[[list[dict]], dict], directory: str | Path, *,
                k: int, batch_size: int, shard_size: int = 2048, process_index: int = 0, num_processes: int = 1,
                wait: Callable[[], None] = lambda: None) -> TopKCache:
    """The teacher's top-``k`` log-probabilities at every target token of ``rows`` (``input_ids``, ``labels``).

    ``collate`` pads a list of rows into a batch with ``decoder_input_ids`` (``DataCollatorForSeq2Seq`` given the
    model), the same decoder inputs the student is trained on; the teacher runs on its own device.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    shards = _Shards(Path(directory), "topk", ".safetensors", len(rows), shard_size, {"kind": "top_k", "k": k})
    device = next(teacher.parameters()).device

    @torch.inference_mode()
    def compute(shard: int) -> None:
        span = list(shards.span(shard))
        ids: list[torch.Tensor] = [torch.empty(0)] * len(span)
        log_probs: list[torch.Tensor] = [torch.empty(0)] * len(span)
        order = sorted(range(len(span)), key=lambda j: -len(rows[span[j]]["labels"]))
        teacher.eval()
        for start in tqdm(range(0, len(order), batch_size), desc=f"teacher top-{k}, shard {shard}",
                          disable=process_index != 0):
            batch_rows = order[start:start + batch_size]
            batch = collate([{f: rows[span[j]][f] for f in ("input_ids", "labels")} for j in batch_rows])
            batch = {name: t.to(device) for name, t in batch.items() if name != "labels"}  # decoder inputs stay
            logits = teacher(**batch).logits
            if not bool(torch.isfinite(logits).all()):  # NaN would be cached and read back in every epoch
                raise NmtqError("the teacher's outputs hold NaN or inf (its weights are finite): it overflows in "
                                "this precision; run it in fp32 (drop --fp16/--bf16) or use another teacher")
            cached = top_k(logits, k)
            for position, j in enumerate(batch_rows):
                length = len(rows[span[j]]["labels"])
                ids[j] = cached.ids[position, :length].to(torch.int32).cpu()
                log_probs[j] = cached.log_probs[position, :length].to(torch.float16).cpu()
        with atomic_path(shards.path(shard)) as tmp:
            save_file({"ids": torch.cat(ids), "log_probs": torch.cat(log_probs),
                       "lengths": torch.tensor([len(t) for t in ids], dtype=torch.int64)}, str(tmp))

    shards.fill(compute, process_index, num_processes, wait)
    return TopKCache(shards)


def cache_directory(root: str | Path, kind: str, *parts: Any) -> Path:
    """``root/kind-FINGERPRINT``: one directory per distinct teacher, data and settings."""
    return Path(root) / f"{kind}-{fingerprint(*parts)}"


class DistillationCollator:
    """Pads a batch as ``DataCollatorForSeq2Seq`` does, plus what distillation adds to each example.

    * ``teacher_labels`` (sequence-level KD beside the references) become ``sequence_labels`` and
      ``sequence_decoder_input_ids``;
    * ``example_id`` looks up the cached teacher top-k of each target stream, padded to the labels' length:
      ``teacher_ids`` / ``teacher_log_probs`` and ``sequence_teacher_ids`` / ``sequence_teacher_log_probs``.
    """

    def __init__(self, tokenizer, model, top_k: dict[str, TopKCache] | None = None) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.model = model
        self.pad = DataCollatorForSeq2Seq(tokenizer, model=model)
        self.top_k = top_k or {}

    def _padded(self, features: list[dict]) -> dict:
        """``DataCollatorForSeq2Seq``'s batch, with ``decoder_input_ids`` for every family (M2M100 and NLLB have
        no ``prepare_decoder_input_ids_from_labels``, so the collator leaves them out)."""
        batch = self.pad(features)
        if "labels" in batch and "decoder_input_ids" not in batch:
            batch["decoder_input_ids"] = decoder_inputs_from_labels(self.model, batch["labels"])
        return batch

    def __call__(self, features: list[dict]) -> dict:
        batch = self._padded([{k: f[k] for k in ("input_ids", "attention_mask", "labels") if k in f}
                              for f in features])
        if "teacher_labels" in features[0]:
            sequence = self._padded([{"input_ids": f["input_ids"], "labels": f["teacher_labels"]} for f in features])
            batch["sequence_labels"] = sequence["labels"]
            batch["sequence_decoder_input_ids"] = sequence["decoder_input_ids"]
        for stream, cache in self.top_k.items():
            prefix = "" if stream == "labels" else "sequence_"
            length = batch[prefix + "labels"].shape[1]
            ids = torch.zeros(len(features), length, cache.k, dtype=torch.long)
            log_probs = torch.zeros(len(features), length, cache.k)
            for i, f in enumerate(features):
                cached = cache[f["example_id"]]
                if len(cached.ids) != len(f[stream]):
                    raise NmtqError(f"the teacher cache has {len(cached.ids)} tokens for example {f['example_id']}"
                                     f" but it has {len(f[stream])}: the cache is stale; delete it")
                ids[i, :len(cached.ids)], log_probs[i, :len(cached.ids)] = cached.ids, cached.log_probs.float()
            batch[prefix + "teacher_ids"], batch[prefix + "teacher_log_probs"] = ids, log_probs
        return batch
