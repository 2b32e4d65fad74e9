"""Quantized codes on disk: exact round trip, masks and points included; damaged files are clear errors."""

import pytest
import torch

from nmtq.export import load_codes, save_codes
from nmtq.quant import Quantizer, encode_tensor


def test_codes_round_trip_exactly_with_points_and_masks(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.Linear(24, 4))
    quantizer = Quantizer(model, bits=3, bucket_size=32, learn_points=True)
    quantizer.prune(0.5)
    state = quantizer.quantize()
    save_codes(state, tmp_path / "q.safetensors")
    loaded = load_codes(tmp_path / "q.safetensors")
    assert set(loaded) == set(state)
    for name, q in state.items():
        assert torch.equal(loaded[name].dequantize(), q.dequantize())
        assert torch.equal(loaded[name].mask, q.mask) and torch.equal(loaded[name].points, q.points)
    absmax = {"w": encode_tensor(torch.randn(5, 7, dtype=torch.float16), 8, "row", "absmax")}
    save_codes(absmax, tmp_path / "a.safetensors")
    assert torch.equal(load_codes(tmp_path / "a.safetensors")["w"].dequantize(), absmax["w"].dequantize())


def test_damaged_or_foreign_files_are_refused(tmp_path):
    save_codes({"w": encode_tensor(torch.randn(64), 4, 16)}, tmp_path / "q.safetensors")
    data = (tmp_path / "q.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_codes(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an nmtq codes file"):
        load_codes(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        load_codes(tmp_path / "missing.safetensors")
