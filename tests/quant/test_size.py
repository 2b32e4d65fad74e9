"""Size accounting: hand-counted bits, Huffman within [H, H + 1) per value, tied weights once."""

import math

import torch
from torch import nn

from nmtq.quant import Quantizer, encode_tensor, size_report


def test_hand_counted_bits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 30), nn.LayerNorm(30))
    report = Quantizer(model, bits=3, bucket_size=64).size(huffman=False)
    # 3000 weights * 3 bits; ceil(3000 / 64) = 47 buckets * (min, max) * 32 bits
    assert report.code_bits == 9000
    assert report.overhead_bits == 47 * 2 * 32
    # bias 30 + LayerNorm weight 30 + bias 30 stay fp32
    assert report.full_precision_bits == 90 * 32
    assert report.fp32_bits == (3000 + 90) * 32
    assert report.total_bytes == math.ceil((9000 + 3008 + 2880) / 8)
    assert math.isclose(report.compression_ratio, (3090 * 32) / (9000 + 3008 + 2880))


def test_absmax_row_has_one_scale_per_row():
    q = encode_tensor(torch.randn(16, 40), 8, "row", "absmax")
    report = size_report({"w": q}, {})
    assert report.overhead_bits == 16 * 32 and report.code_bits == 640 * 8


def test_huffman_is_within_one_bit_of_entropy():
    torch.manual_seed(0)
    w = torch.randn(50_000)  # gaussian weights: the middle levels dominate, so Huffman beats 4 bits
    report = size_report({"w": encode_tensor(w, 4, bucket_size=None)}, {})
    t = report.tensors[0]
    coded_bits = t.huffman_bits - 16 * 8  # minus the code-length table
    assert t.entropy * t.numel <= coded_bits < (t.entropy + 1) * t.numel
    assert t.entropy < 4 and report.total_huffman_bits < report.total_bits


def test_tied_weights_are_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.embed(ids))

    report = Quantizer(Tied(), bits=4, bucket_size=None).size(huffman=False)
    assert len(report.tensors) == 1
    assert report.code_bits == 400 * 4 and report.fp32_bits == 400 * 32


def test_learned_points_count_as_overhead_not_as_full_precision():
    model = nn.Linear(64, 64, bias=False)
    report = Quantizer(model, bits=2, bucket_size=None, learn_points=True).size(huffman=False)
    assert report.overhead_bits == 2 * 32 + 4 * 32  # (min, max) + 4 points
    assert report.full_precision_bits == 0 and report.fp32_bits == 4096 * 32


def test_table_mentions_totals():
    report = Quantizer(nn.Linear(32, 32), bits=4).size()
    text = report.table()
    assert "weight" in text and f"{report.total_bytes:,} B" in text
