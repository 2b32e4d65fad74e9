"""nmtq.quant: quantization of any ``nn.Module`` (torch only; never imports transformers).

Example:
    >>> import torch
    >>> from nmtq.quant import Quantizer, quantize_tensor
    >>> quantize_tensor(torch.tensor([0.0, 0.3, 1.0]), bits=1, bucket_size=None).tolist()
    [0.0, 0.0, 1.0]
"""

from .autograd import bits_by_gradient_norm, fake_quantize, fake_quantize_to_points, init_points
from .config import QuantizerConfig
from .diffq import (
    GroupQuantized,
    bits_from_logits,
    decode_groups,
    encode_groups,
    group_numels,
    logits_for_bits,
    pseudo_quantize,
    round_bits,
    size_in_bits,
    size_in_megabytes,
    size_penalty,
)
from .functional import QuantizedTensor, encode_tensor, encode_to_points, quantize_tensor, quantize_to_points
from .huffman import HuffmanStats, huffman_code_lengths, huffman_stats
from .packing import huffman_decode, huffman_encode, pack_codes, packed_numel, unpack_codes
from .prune import magnitude_mask, sparsity_at
from .quantizer import Quantizer
from .selection import select_parameters
from .size import SizeReport, TensorSize, size_report

__all__ = [
    "HuffmanStats",
    "QuantizedTensor",
    "Quantizer",
    "QuantizerConfig",
    "SizeReport",
    "TensorSize",
    "bits_by_gradient_norm",
    "encode_tensor",
    "encode_to_points",
    "fake_quantize",
    "fake_quantize_to_points",
    "huffman_code_lengths",
    "huffman_stats",
    "init_points",
    "magnitude_mask",
    "quantize_tensor",
    "quantize_to_points",
    "select_parameters",
    "size_report",
    "sparsity_at",
]
__all__ += ["huffman_decode", "huffman_encode", "pack_codes", "packed_numel", "unpack_codes"]
__all__ += ["GroupQuantized", "bits_from_logits", "decode_groups", "encode_groups", "group_numels", "logits_for_bits",
            "pseudo_quantize", "round_bits", "size_in_bits", "size_in_megabytes", "size_penalty"]
