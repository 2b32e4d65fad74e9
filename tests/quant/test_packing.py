"""Tests for nmtq.quant.packing: dense bit packing and canonical Huffman streams against brute-force references."""

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nmtq.quant.packing as packing
from nmtq.quant import (
    encode_tensor,
    huffman_decode,
    huffman_encode,
    pack_codes,
    packed_numel,
    unpack_codes,
)
from nmtq.quant.huffman import canonical_codes, huffman_code_lengths, huffman_stats, symbol_counts
from nmtq.quant.size import tensor_size


@st.composite
def codes_st(draw, max_size=200):
    """(bits, codes) with any length from 0, including lengths not divisible by 8."""
    bits = draw(st.integers(1, 8))
    codes = draw(st.lists(st.integers(0, 2**bits - 1), max_size=max_size))
    return bits, codes


def reference_pack(codes, bits):
    """Brute force: code i at bits [i * bits, (i + 1) * bits) of one little-endian integer."""
    number = sum(c << (i * bits) for i, c in enumerate(codes))
    return list(number.to_bytes(math.ceil(len(codes) * bits / 8), "little"))


def reference_huffman_stream(codes, lengths):
    """Brute force: the canonical codeword strings of huffman.py, concatenated, stored least significant bit first."""
    table = canonical_codes(lengths)
    bitstring = "".join(table[c] for c in codes)
    bitstring += "0" * (-len(bitstring) % 8)
    return [int(bitstring[i : i + 8][::-1], 2) for i in range(0, len(bitstring), 8)]


def skewed_codes(n, bits, seed, scale=1.0):
    """Geometric-like codes: small values common, large ones rare (long Huffman codewords)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n).exponential_(1.0 / scale, generator=g).floor()
    return x.clamp_(max=2**bits - 1).to(torch.uint8)


def u8(values):
    return torch.tensor(values, dtype=torch.uint8)


def test_doctests():
    assert doctest.testmod(packing, extraglobs={"torch": torch}).failed == 0


# ---------------------------------------------------------------------------------------------- dense packing
def test_hand_computed_examples():
    assert pack_codes(torch.tensor([1, 2, 3]), bits=2).tolist() == [0b00111001] == [57]
    # 3 bits straddle bytes: 5 = 101, 7 = 111, 1 = 001 -> bits 1,0,1, 1,1,1, 1,0,0 -> 0b01111101, 0b00000000
    assert pack_codes(torch.tensor([5, 7, 1]), bits=3).tolist() == [125, 0]
    assert pack_codes(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), bits=1).tolist() == [0b00001101, 1]
    assert pack_codes(torch.tensor([0xA, 0x5]), bits=4).tolist() == [0x5A]
    assert unpack_codes(u8([57]), bits=2, numel=3).tolist() == [1, 2, 3]


@settings(max_examples=150, deadline=None)
@given(codes_st())
def test_round_trip_matches_brute_force(case):
    bits, codes = case
    packed = pack_codes(torch.tensor(codes, dtype=torch.int64), bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == math.ceil(len(codes) * bits / 8) == packed_numel(len(codes), bits)
    assert packed.tolist() == reference_pack(codes, bits)
    unpacked = unpack_codes(packed, bits, len(codes))
    assert unpacked.dtype == torch.uint8 and unpacked.tolist() == codes


@pytest.mark.parametrize("bits", range(1, 9))
def test_large_round_trip_every_width(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (1_000_003,), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.numel() == math.ceil(1_000_003 * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, codes.numel()), codes)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_dtype_and_shape(dtype):
    codes = torch.tensor([[1, 0, 3], [2, 2, 1]], dtype=dtype)
    assert pack_codes(codes, 2).tolist() == reference_pack([1, 0, 3, 2, 2, 1], 2)


def test_bool_mask_packs_as_bits():
    mask = torch.tensor([True, False, True, True, False, False, False, False, True, True])
    assert pack_codes(mask, 1).tolist() == [0b00001101, 0b11]
    assert unpack_codes(pack_codes(mask, 1), 1, 10).bool().tolist() == mask.tolist()


def test_quantized_codes_round_trip():
    q = encode_tensor(torch.randn(1000, generator=torch.Generator().manual_seed(0)), bits=5, bucket_size=64)
    assert torch.equal(unpack_codes(pack_codes(q.codes, q.bits), q.bits, q.codes.numel()), q.codes)


@pytest.mark.parametrize("bits", [0, 9, 16, -1, True, 2.0, "4"])
def test_unsupported_bits_raise(bits):
    with pytest.raises(ValueError, match="1 to 8 bits"):
        pack_codes(torch.tensor([0]), bits)
    with pytest.raises(ValueError, match="1 to 8 bits"):
        unpack_codes(u8([0]), bits, 1)


def test_codes_out_of_range_raise():
    with pytest.raises(ValueError, match="codes do not fit in 2 bits: max value 4"):
        pack_codes(torch.tensor([0, 4, 1]), bits=2)
    with pytest.raises(ValueError, match="codes do not fit in 8 bits: max value 256"):
        pack_codes(torch.tensor([256]), bits=8)
    with pytest.raises(ValueError, match="codes do not fit in 3 bits: max value 2, min value -1"):
        pack_codes(torch.tensor([-1, 2]), bits=3)


@pytest.mark.parametrize("codes", [torch.tensor([0.0, 1.0]), [0, 1], torch.tensor([1 + 0j])])
def test_non_integer_codes_raise(codes):
    with pytest.raises(ValueError, match="integer tensor"):
        pack_codes(codes, bits=2)


def test_wrong_packed_length_raises():
    packed = pack_codes(torch.tensor([1, 2, 3, 4, 5]), bits=3)  # 15 bits -> 2 bytes
    with pytest.raises(ValueError, match="truncated or corrupted"):
        unpack_codes(packed[:1], bits=3, numel=5)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        unpack_codes(torch.cat([packed, u8([0])]), bits=3, numel=5)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        unpack_codes(packed, bits=3, numel=6)  # 18 bits need 3 bytes
    with pytest.raises(ValueError, match="truncated or corrupted"):
        unpack_codes(u8([]), bits=1, numel=1)


def test_non_zero_padding_bits_raise():
    with pytest.raises(ValueError, match="padding bits"):
        unpack_codes(u8([0b10000000]), bits=3, numel=2)  # 6 code bits, bit 7 set
    assert unpack_codes(u8([0b10000000]), bits=4, numel=2).tolist() == [0, 8]


@pytest.mark.parametrize("packed", [torch.tensor([1, 2]), u8([[1]]), [1, 2]])
def test_packed_must_be_1d_uint8(packed):
    with pytest.raises(ValueError, match="1-D uint8"):
        unpack_codes(packed, bits=8, numel=2)


@pytest.mark.parametrize("numel", [-1, 2.0, None])
def test_bad_numel_raises(numel):
    with pytest.raises(ValueError, match="numel"):
        unpack_codes(u8([0]), bits=8, numel=numel)


# ---------------------------------------------------------------------------------------------- Huffman coding
def test_huffman_hand_computed_example():
    # counts [3, 1, 1, 0] -> lengths [1, 2, 2, 0] -> codewords 0, 10, 11; stream 0 0 0 10 11 (7 bits)
    lengths, stream = huffman_encode(torch.tensor([0, 0, 0, 1, 2]), bits=2)
    assert lengths.dtype == torch.uint8 and lengths.tolist() == [1, 2, 2, 0]
    assert stream.dtype == torch.uint8 and stream.tolist() == [0b01101000]
    assert huffman_decode(lengths, stream, 5).tolist() == [0, 0, 0, 1, 2]


@settings(max_examples=100, deadline=None)
@given(codes_st(max_size=300))
def test_huffman_matches_brute_force_and_round_trips(case):
    bits, codes = case
    lengths, stream = huffman_encode(torch.tensor(codes, dtype=torch.int32), bits)
    assert lengths.numel() == 2**bits
    if codes:
        assert lengths.tolist() == huffman_code_lengths(symbol_counts(torch.tensor(codes), 2**bits))
    assert stream.tolist() == reference_huffman_stream(codes, lengths.tolist())
    decoded = huffman_decode(lengths, stream, len(codes))
    assert decoded.dtype == torch.uint8 and decoded.tolist() == codes


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**16), st.integers(1, 3000), st.floats(0.2, 20.0))
def test_huffman_round_trip_skewed(bits, seed, n, scale):
    codes = skewed_codes(n, bits, seed, scale)
    lengths, stream = huffman_encode(codes, bits)
    assert torch.equal(huffman_decode(lengths, stream, n), codes)


@pytest.mark.parametrize(("bits", "scale"), [(8, 3.0), (8, 1000.0), (4, 0.5), (1, 1.0)])
def test_huffman_large_round_trip(bits, scale):
    codes = skewed_codes(300_001, bits, seed=bits, scale=scale)
    lengths, stream = huffman_encode(codes, bits)
    assert torch.equal(huffman_decode(lengths, stream, codes.numel()), codes)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4000), st.sampled_from([None, 64, "row"]), st.integers(0, 2**16))
def test_huffman_stream_length_matches_size_accounting(bits, n, bucket_size, seed):
    w = torch.randn(n // 8 + 1, 8, generator=torch.Generator().manual_seed(seed))
    q = encode_tensor(w, bits=bits, bucket_size=bucket_size)
    lengths, stream = huffman_encode(q.codes, bits)
    size = tensor_size("w", q)
    table_bits = 8 * lengths.numel()
    payload_bits = size.huffman_bits - table_bits
    assert payload_bits == huffman_stats(symbol_counts(q.codes, 2**bits)).total_bits
    assert stream.numel() == math.ceil(payload_bits / 8)  # the stream is the accounted bits plus byte padding


def test_skewed_distribution_compresses_below_bits():
    bits = 4
    codes = skewed_codes(10_000, bits, seed=0, scale=0.7)
    lengths, stream = huffman_encode(codes, bits)
    assert 8 * stream.numel() < 0.5 * bits * codes.numel()
    assert 8 * stream.numel() < 8 * packed_numel(codes.numel(), bits)
    assert torch.equal(huffman_decode(lengths, stream, codes.numel()), codes)


def test_huffman_empty_and_single_symbol():
    lengths, stream = huffman_encode(torch.zeros(0, dtype=torch.uint8), bits=3)
    assert lengths.tolist() == [0] * 8 and stream.numel() == 0
    assert huffman_decode(lengths, stream, 0).numel() == 0
    lengths, stream = huffman_encode(torch.full((20,), 3), bits=2)
    assert lengths.tolist() == [0, 0, 0, 1] and stream.tolist() == [0, 0, 0]  # one 0 bit per code
    assert huffman_decode(lengths, stream, 20).tolist() == [3] * 20


def test_huffman_corrupted_streams_raise():
    codes = skewed_codes(1000, 4, seed=1)
    lengths, stream = huffman_encode(codes, 4)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        huffman_decode(lengths, stream[:-1], 1000)  # ends early
    with pytest.raises(ValueError, match="truncated or corrupted"):
        huffman_decode(lengths, stream, 5000)  # more codes than the stream holds
    with pytest.raises(ValueError, match="data after them"):
        huffman_decode(lengths, torch.cat([stream, u8([0])]), 1000)  # trailing byte
    with pytest.raises(ValueError, match="data after them"):
        huffman_decode(lengths, stream, 10)  # fewer codes than the stream holds


def test_huffman_invalid_codeword_raises():
    lengths = u8([0, 0, 0, 1])  # one symbol: codeword "0"; "1" is no codeword
    with pytest.raises(ValueError, match="match no codeword"):
        huffman_decode(lengths, u8([0b00000100]), 8)
    with pytest.raises(ValueError, match="data after them"):
        huffman_decode(lengths, u8([0b10000000]), 7)  # non-zero padding bit


@pytest.mark.parametrize(
    "lengths",
    [u8([1, 1, 1, 0]), u8([1, 2, 2]), torch.tensor([1.0, 1.0]), torch.tensor([1, 57]), torch.tensor([-1, 1])],
)
def test_huffman_bad_code_table_raises(lengths):
    with pytest.raises(ValueError):
        huffman_decode(lengths, u8([0]), 1)


def test_huffman_empty_table_with_codes_raises():
    with pytest.raises(ValueError, match="numel is wrong"):
        huffman_decode(u8([0, 0]), u8([]), 3)


def test_huffman_validates_codes_and_bits():
    with pytest.raises(ValueError, match="codes do not fit in 2 bits: max value 5"):
        huffman_encode(torch.tensor([5]), bits=2)
    with pytest.raises(ValueError, match="1 to 8 bits"):
        huffman_encode(torch.tensor([5]), bits=9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=400), st.integers(0, 500))
def test_walk_matches_sequential_reference(steps_sizes, numel):
    """Pointer doubling (with relabelling) against following the chain one step at a time."""
    total = sum(steps_sizes)
    nxt = torch.tensor([min(p + steps_sizes[p % len(steps_sizes)], total + 1) for p in range(total)]
                       + [total + 1, total + 1], dtype=torch.int32)
    expected, p = [0], 0
    for _ in range(numel):
        p = int(nxt[p])
        expected.append(p)
    assert packing._walk(nxt, numel).tolist() == expected
