"""nmtq's one on-disk format of quantized weights (nmtq.codes): exact round trips in every storage, the same bytes
from any process, the files of earlier versions still read, and damaged files refused."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtq.codes import HEADER_KEY, STORAGES, codes_tensors, read_codes, save_codes
from nmtq.quant import Quantizer, encode_tensor


def same(a, b):
    return (torch.equal(a.dequantize(), b.dequantize()) and a.bits == b.bits and a.shape == b.shape
            and a.dtype == b.dtype and (a.mask is None) == (b.mask is None)
            and (a.mask is None or torch.equal(a.mask, b.mask))
            and (a.points is None) == (b.points is None) and (a.points is None or torch.equal(a.points, b.points)))


@pytest.mark.parametrize("storage", STORAGES)
def test_codes_round_trip_exactly_with_points_and_masks(storage, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 4))
    quantizer = Quantizer(model, bits=3, bucket_size=32, learn_points=True)
    quantizer.prune(0.5)
    state = quantizer.quantize()
    save_codes(state, tmp_path / "q.safetensors", storage=storage)
    stored = read_codes(tmp_path / "q.safetensors")
    assert stored.storage == storage and set(stored.quantized) == set(state) and stored.plain == {}
    assert all(same(stored.quantized[name], q) for name, q in state.items())
    absmax = {"w": encode_tensor(torch.randn(5, 7, dtype=torch.float16), 8, "row", "absmax")}
    save_codes(absmax, tmp_path / "a.safetensors", storage=storage)
    assert same(read_codes(tmp_path / "a.safetensors").quantized["w"], absmax["w"])


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), numel=st.integers(1, 300), bucket=st.sampled_from([None, 7, 64, "row"]),
       scaling=st.sampled_from(["linear", "absmax"]), pruned=st.booleans(), storage=st.sampled_from(STORAGES),
       seed=st.integers(0, 2**16))
def test_any_quantized_tensor_reads_back_as_it_was_written(bits, numel, bucket, scaling, pruned, storage, seed,
                                                           tmp_path_factory):
    bits = max(bits, 2) if scaling == "absmax" else bits  # absmax needs a sign bit
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(numel, generator=generator).reshape(-1, 1 if numel % 3 else 3)
    q = encode_tensor(w, bits, bucket, scaling)
    if pruned:
        q = dataclasses.replace(q, mask=torch.rand(w.shape, generator=generator) < 0.5)
    path = tmp_path_factory.mktemp("codes") / "q.safetensors"
    plain = {"bias": torch.randn(3, generator=generator)}
    save_codes({"w": q}, path, plain=plain, storage=storage)
    stored = read_codes(path)
    assert same(stored.quantized["w"], q) and torch.equal(stored.plain["bias"], plain["bias"])


def test_raw_storage_keeps_codes_wider_than_a_byte(tmp_path):
    q = encode_tensor(torch.randn(40, 3), 12, 16)
    save_codes({"w": q}, tmp_path / "q.safetensors")
    assert same(read_codes(tmp_path / "q.safetensors").quantized["w"], q)
    with pytest.raises(ValueError, match="12-bit codes; packed codes take 1 to 8 bits"):
        codes_tensors({"w": q}, storage="packed")


def test_a_model_file_carries_a_placeholder_that_plain_loaders_refuse(tmp_path):
    small, large = encode_tensor(torch.randn(4, 4), 4, 16), encode_tensor(torch.randn(16, 8), 4, 16)
    tensors = codes_tensors({"a.weight": small, "b.weight": large}, plain={"a.bias": torch.zeros(4)}, storage="packed")
    assert tensors["b.weight"].numel() == 0 and "a.weight" not in tensors  # the largest weight, empty
    document = json.loads(bytes(tensors[HEADER_KEY].tolist()))
    assert document["format"] == "nmtq.codes.v2" and document["storage"] == "packed"
    assert document["tensors"]["b.weight"]["stored_codes"] == 128
    assert "b.weight" not in codes_tensors({"b.weight": large})  # a run's codes file is no model: no placeholder


WRITE = """
import sys, torch
from nmtq.codes import save_codes
from nmtq.quant import encode_tensor
g = torch.Generator().manual_seed(0)
quantized = {f"layer{i}.weight": encode_tensor(torch.randn(8, 16, generator=g), 1 + i, 32) for i in range(6)}
save_codes(quantized, sys.argv[1], plain={"bias": torch.randn(8, generator=g)}, storage="packed")
"""


def test_every_process_writes_the_same_bytes(tmp_path):
    # safetensors writes metadata keys in a random order per process: the decoding header is a tensor instead
    for run in ("a", "b", "c"):
        subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / f"{run}.safetensors")], check=True)
    data = {(tmp_path / f"{run}.safetensors").read_bytes() for run in ("a", "b", "c")}
    assert len(data) == 1


def test_files_of_the_earlier_formats_still_read(tmp_path):
    from safetensors.torch import save_file

    from nmtq.quant import pack_codes

    q = encode_tensor(torch.randn(6, 8), 3, 16)
    q = dataclasses.replace(q, mask=torch.arange(48).reshape(6, 8) % 3 > 0)
    info = {"bits": 3, "bucket_size": 16, "scaling": "linear", "shape": [6, 8], "dtype": "float32"}
    # a run's quantized.safetensors of nmtq.codes.v1: a code per weight, the mask a byte per weight
    save_file({"w.codes": q.codes, "w.ranges": q.ranges, "w.mask": q.mask.to(torch.uint8)}, str(tmp_path / "run"),
              metadata={"format": "nmtq.codes.v1", "tensors": json.dumps({"w": info})})
    # an export of nmtq.export.v1: packed codes of the kept weights, the mask a bit per weight
    kept = q.codes[q.mask.reshape(-1)]
    save_file({"w.codes": pack_codes(kept, 3), "w.ranges": q.ranges, "w.mask": pack_codes(q.mask, 1),
               "bias": torch.ones(2)}, str(tmp_path / "export"),
              metadata={"format": "nmtq.export.v1", "quantized": json.dumps({"w": info | {"stored_codes": 32}})})
    for name, storage in (("run", "raw"), ("export", "packed")):
        stored = read_codes(tmp_path / name)
        assert stored.storage == storage and same(stored.quantized["w"], q)
    assert set(read_codes(tmp_path / "export").plain) == {"bias"}


def test_damaged_or_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    q = encode_tensor(torch.randn(64), 4, 16)
    save_codes({"w": q}, tmp_path / "q.safetensors")
    data = (tmp_path / "q.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        read_codes(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="holds no nmtq codes"):
        read_codes(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        read_codes(tmp_path / "missing.safetensors")
    tensors = codes_tensors({"w": q})
    tensors["w.codes"] = tensors["w.codes"][:10]  # fewer codes than the header says
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="w cannot be decoded"):
        read_codes(tmp_path / "short.safetensors")
    tensors = codes_tensors({"w": q})
    tensors[HEADER_KEY] = torch.frombuffer(bytearray(b'{"format": "other"}'), dtype=torch.uint8)
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not one of nmtq's formats"):
        read_codes(tmp_path / "other.safetensors")
