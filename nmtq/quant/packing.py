"""Storage format of integer codes: dense bit packing and canonical Huffman coding (torch only, vectorised).

Both formats use one bit order: bit ``p`` of a stream is bit ``p % 8`` (least significant first) of byte
``p // 8``, and the last byte is padded with zero bits.

* :func:`pack_codes` stores code ``i`` in bits ``[i * bits, (i + 1) * bits)``, least significant bit first, so
  ``numel`` codes take exactly ``ceil(numel * bits / 8)`` bytes (2, 4 and 8 bits fill whole bytes; 3, 5, 6 and 7
  bits straddle them).
* :func:`huffman_encode` writes each code as its canonical Huffman codeword, most significant bit first (as
  in DEFLATE), and returns the code length of every symbol (one byte each): the codewords follow from the
  lengths alone. The stream holds ``sum(count * length)`` bits, which is what :mod:`nmtq.quant.size` reports.

Example:
    >>> pack_codes(torch.tensor([1, 2, 3]), bits=2).tolist()  # 0b00_11_10_01
    [57]
    >>> unpack_codes(torch.tensor([57], dtype=torch.uint8), bits=2, numel=3).tolist()
    [1, 2, 3]
"""

from __future__ import annotations

import torch

from .huffman import canonical_codes, huffman_code_lengths, is_int_tensor, symbol_counts

__all__ = ["huffman_decode", "huffman_encode", "pack_codes", "packed_numel", "unpack_codes"]

PACK_BITS = range(1, 9)
_CHUNK_BYTES = 1 << 19
MAX_CODE_LENGTH = 56  # codewords are shifted in int64; a longer Huffman code needs more than 5e11 values


# ---------------------------------------------------------------------------------------------- validation
def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in PACK_BITS:
        raise ValueError(
            f"bits={bits!r} is not supported: codes can be packed at 1 to 8 bits per code (one uint8 per code "
            "once unpacked); quantize with bits <= 8"
        )


def _check_numel(numel: int) -> None:
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel={numel!r} is invalid: pass the number of stored codes, a non-negative int")


def _check_bytes(t: object, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        desc = f"dtype={t.dtype}, shape={tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 1-D uint8 tensor of bytes; got {desc}")


def _flat_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``codes`` flattened to uint8 after checking that they are integers in ``[0, 2**bits)``."""
    if isinstance(codes, torch.Tensor) and codes.dtype == torch.bool:
        return codes.reshape(-1).to(torch.uint8)
    if not is_int_tensor(codes):
        raise ValueError(
            f"codes must be an integer tensor; got {getattr(codes, 'dtype', type(codes).__name__)}: pass the "
            "integer codes of a QuantizedTensor (encode_tensor(...).codes), not de-quantized values"
        )
    flat = codes.reshape(-1)
    if flat.numel():
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= 2**bits:
            raise ValueError(
                f"codes do not fit in {bits} bits: max value {hi}, min value {lo}, but {bits}-bit codes lie in "
                f"[0, {2**bits - 1}]; pass the bits the codes were encoded with (QuantizedTensor.bits)"
            )
    return flat.to(torch.uint8)


def packed_numel(numel: int, bits: int) -> int:
    """Bytes that :func:`pack_codes` writes for ``numel`` codes of ``bits`` bits: ``ceil(numel * bits / 8)``.

    >>> packed_numel(10, 3)
    4
    """
    _check_bits(bits)
    _check_numel(numel)
    return -(-numel * bits // 8)


# ---------------------------------------------------------------------------------------------- dense packing
def _pack(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 values below ``2**bits``: each group of 8 codes becomes one int64 word, i.e. ``bits`` bytes."""
    nbytes = -(-flat.numel() * bits // 8)
    if bits == 8:
        return flat.clone()
    groups = -(-flat.numel() // 8)
    padded = flat.new_zeros(groups * 8)
    padded[: flat.numel()] = flat
    codes = padded.view(groups, 8)
    word = codes[:, 0].to(torch.int64)
    for j in range(1, 8):  # at most 8 * 7 = 56 bits: no sign bit involved
        word |= codes[:, j].to(torch.int64) << (j * bits)
    out = flat.new_empty(groups, bits)
    for k in range(bits):
        out[:, k] = word >> (8 * k) & 0xFF
    return out.reshape(-1)[:nbytes]


# codes per byte -> the integer dtype one byte's codes fill, one byte a code (1, 2 and 4 bits: byte-aligned)
_SPREAD_DTYPES = {8: torch.int64, 4: torch.int32, 2: torch.int16}
_SPREAD: dict[tuple[int, torch.device], torch.Tensor] = {}


def byte_table(values: torch.Tensor, bits: int) -> torch.Tensor:
    """``(256, 8 // bits)`` table: row ``v`` holds ``values[c]`` for each code ``c`` of byte ``v``, in stream order.

    For 1, 2 and 4 bits, where every code lies inside one byte. Gathering a row per packed byte decodes a whole
    byte at once (see :func:`gather_rows`).
    """
    v = torch.arange(256, device=values.device)
    shifts = torch.arange(0, 8, bits, device=values.device)
    return values[(v[:, None] >> shifts) & (2**bits - 1)].contiguous()


def gather_rows(table: torch.Tensor, packed: torch.Tensor, out: torch.Tensor, wide: torch.dtype) -> torch.Tensor:
    """``out`` (of ``table``'s dtype, ``packed.numel()`` rows of ``table``) = ``table[packed]``, row after row.

    Each row is moved as one element of ``wide`` (a dtype of the row's size): one 1-D gather, which torch runs
    much faster than gathering small rows or strided writes. Only bits are copied, never arithmetic.
    """
    table, target = table.view(wide).view(-1), out.view(wide).view(-1)
    if torch.get_num_threads() > 1:  # take splits the gather across threads (index_select runs on one)
        torch.take(table, packed.long(), out=target)
    else:  # one thread: index_select, with a narrower index, is faster
        torch.index_select(table, 0, packed.int(), out=target)
    return out


def _unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`_pack` (``packed`` already has the right length), on uint8 only: 1, 2 and 4 bits through
    a table of each byte's codes, 3, 5, 6 and 7 bits by shifting the one or two bytes that hold each code."""
    if bits == 8:
        return packed[:numel].clone()
    k = 8 // bits
    if k * bits == 8:
        key = (bits, packed.device)
        if key not in _SPREAD:
            _SPREAD[key] = byte_table(torch.arange(2**bits, dtype=torch.uint8, device=packed.device), bits)
        out = packed.new_empty(packed.numel() * k)
        return gather_rows(_SPREAD[key], packed, out.view(-1, k), _SPREAD_DTYPES[k]).view(-1)[:numel]
    groups = -(-numel // 8)  # 8 codes fill `bits` whole bytes
    data = packed
    if packed.numel() < groups * bits:
        data = packed.new_zeros(groups * bits)
        data[: packed.numel()] = packed
    data = data.view(groups, bits)
    out = packed.new_empty(groups, 8)
    for j in range(8):
        byte, shift = divmod(j * bits, 8)
        code = data[:, byte] >> shift
        if shift + bits > 8:  # the code's high bits open the next byte (uint8 shifts drop what overflows)
            code |= data[:, byte + 1] << (8 - shift)
        torch.bitwise_and(code, 2**bits - 1, out=out[:, j])
    return out.view(-1)[:numel]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` densely into ``ceil(numel * bits / 8)`` bytes.

    Code ``i`` (of ``codes`` flattened) occupies bits ``[i * bits, (i + 1) * bits)`` of the byte stream, least
    significant bit first; the unused high bits of the last byte are zero. A bool tensor (a pruning mask) is
    packed as 0/1 codes.

    Args:
        codes: integer (or bool) tensor of any shape, e.g. ``QuantizedTensor.codes``.
        bits: bits per code, 1 to 8.

    Returns:
        A 1-D uint8 tensor on the device of ``codes``.

    Example:
        >>> pack_codes(torch.tensor([5, 7, 1]), bits=3).tolist()  # 101 111 001 -> 0b01_111_101, 0b0000000_0
        [125, 0]
    """
    _check_bits(bits)
    return _pack(_flat_codes(codes, bits), bits)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Codes stored by :func:`pack_codes`: a 1-D uint8 tensor of ``numel`` codes.

    Raises a ``ValueError`` unless ``packed`` holds exactly ``ceil(numel * bits / 8)`` bytes with zero padding
    bits, which catches truncated files and a wrong ``numel`` or ``bits``.

    Example:
        >>> unpack_codes(torch.tensor([125, 0], dtype=torch.uint8), bits=3, numel=3).tolist()
        [5, 7, 1]
    """
    _check_bytes(packed, "packed")
    expected = packed_numel(numel, bits)
    if packed.numel() != expected:
        raise ValueError(
            f"packed has {packed.numel()} bytes but {numel} codes of {bits} bits take {expected}: the file is "
            "truncated or corrupted, or numel/bits do not match what was packed"
        )
    used = numel * bits % 8
    if used and int(packed[-1]) >> used:
        raise ValueError(
            f"the last packed byte has non-zero padding bits ({int(packed[-1]):#010b}, only the low {used} are "
            "codes): the file is corrupted, or numel/bits do not match what was packed"
        )
    return _unpack(packed, bits, numel)


# ---------------------------------------------------------------------------------------------- Huffman coding
def _canonical_table(lengths: list[int]) -> tuple[list[int], list[int], list[int]]:
    """(symbols, code lengths, codeword values) of the canonical code, in codeword order."""
    codes = canonical_codes(lengths)  # ordered by (length, symbol), i.e. by codeword
    symbols = list(codes)
    return symbols, [lengths[s] for s in symbols], [int(codes[s], 2) for s in symbols]


def huffman_encode(codes: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical Huffman coding of integer codes in ``[0, 2**bits)``, built from their frequencies.

    Returns:
        ``(lengths, stream)``: ``lengths`` is a uint8 tensor of ``2**bits`` codeword lengths (0 for an unused
        symbol; :func:`~nmtq.quant.huffman.huffman_code_lengths` of the counts), from which the canonical
        codewords follow; ``stream`` is a uint8 tensor of ``ceil(total / 8)`` bytes holding the codewords,
        ``total = sum(count * length)`` bits, in the bit order of :func:`pack_codes`, each codeword most
        significant bit first. No codes give all-zero lengths and an empty stream.

    Example:
        >>> lengths, stream = huffman_encode(torch.tensor([0, 0, 0, 1, 2]), bits=2)  # 0 -> 0, 1 -> 10, 2 -> 11
        >>> lengths.tolist(), stream.tolist()  # bits 0 0 0 1 0 1 1 -> 0b0_1101000
        ([1, 2, 2, 0], [104])
    """
    _check_bits(bits)
    flat = _flat_codes(codes, bits).to(torch.int64)
    if flat.numel() == 0:
        return flat.new_zeros(2**bits, dtype=torch.uint8), flat.new_zeros(0, dtype=torch.uint8)
    lengths = huffman_code_lengths(symbol_counts(flat, 2**bits))
    if max(lengths) > MAX_CODE_LENGTH:
        raise ValueError(f"a Huffman codeword is longer than {MAX_CODE_LENGTH} bits; pack these codes instead")
    symbol_bits = torch.tensor(lengths, dtype=torch.int64, device=flat.device)
    codeword = torch.zeros(2**bits, dtype=torch.int64, device=flat.device)
    symbols, _, values = _canonical_table(lengths)
    codeword[symbols] = torch.tensor(values, dtype=torch.int64, device=flat.device)
    return symbol_bits.to(torch.uint8), _write_codewords(codeword[flat], symbol_bits[flat])


def _write_codewords(value: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Concatenate codewords (``length[i]`` <= 56 bits each, most significant bit first) into a byte stream."""
    start = torch.cumsum(length, 0) - length
    nbytes = -(-int(start[-1] + length[-1]) // 8)
    # bit-reversed bytes first: a codeword is then a big-endian field of the 64-bit word at its first byte
    # (7 + 56 bits at most, so it fits), added byte by byte (fields never overlap; the byte masks drop the sign)
    word = value << (64 - (start & 7) - length)
    first = start >> 3
    out = torch.zeros(nbytes + 8, dtype=torch.int64, device=value.device)
    for m in range((7 + int(length.max()) + 7) // 8):
        out.index_add_(0, first + m, word >> (56 - 8 * m) & 0xFF)
    return _reverse_bits(out[:nbytes].to(torch.uint8))


def _reverse_bits(data: torch.Tensor) -> torch.Tensor:
    """Each byte of ``data`` with its bit order reversed (least and most significant bit first swap)."""
    table = torch.tensor([int(f"{b:08b}"[::-1], 2) for b in range(256)], dtype=torch.uint8, device=data.device)
    return table[data.long()]


def _check_lengths(lengths: torch.Tensor) -> list[int]:
    if not is_int_tensor(lengths) or lengths.dim() != 1 or lengths.numel() not in [2**b for b in PACK_BITS]:
        desc = f"dtype={lengths.dtype}, shape={tuple(lengths.shape)}" if isinstance(lengths, torch.Tensor) \
            else type(lengths).__name__
        raise ValueError(f"lengths must be a 1-D integer tensor of 2**bits codeword lengths (bits 1..8); got {desc}")
    values = lengths.tolist()
    if min(values) < 0 or max(values) > MAX_CODE_LENGTH:
        raise ValueError(
            f"lengths must lie in [0, {MAX_CODE_LENGTH}]; got range [{min(values)}, {max(values)}]: the code table "
            "is corrupted"
        )
    return values


def _next_codeword(stream: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For every bit position ``p`` of ``stream``: the index (in codeword order, uint8) of the codeword starting
    at ``p``, and where the next one starts: ``8 * len(stream) + 1`` (the error state) if no codeword fits."""
    _, code_bits, values = _canonical_table(lengths)
    longest, total = max(code_bits), 8 * stream.numel()
    # canonical codewords, left-aligned to `longest` bits, tile [0, limit) in codeword order
    starts = torch.tensor([v << (longest - n) for v, n in zip(values, code_bits)], dtype=torch.int64)
    limit, sizes = int(starts[-1]) + (1 << (longest - code_bits[-1])), torch.tensor(code_bits)
    # big-endian 64-bit word at every byte of the bit-reversed stream: its first bit is the stream's bit 8 * q
    data = torch.cat([_reverse_bits(stream), stream.new_zeros(7)]).to(torch.int64)
    word = data[: stream.numel()] << 56
    for m in range(1, 8):
        word |= data[m : m + stream.numel()] << (56 - 8 * m)
    index = torch.empty(total, dtype=torch.uint8)
    nxt = torch.full((total + 2,), total + 1, dtype=torch.int32 if total + 2 < 2**31 else torch.int64)
    offsets = torch.arange(8)
    for q in range(0, stream.numel(), _CHUNK_BYTES):  # in chunks: the int64 temporaries take 8 bytes a bit
        chunk = word[q : q + _CHUNK_BYTES, None]
        # the `longest` (<= 56) bits from each position, first bit most significant (the shifts wrap the sign
        # bit, which the mask drops)
        window = ((chunk << offsets) >> (64 - longest) & ((1 << longest) - 1)).reshape(-1)
        i = torch.searchsorted(starts, window, right=True) - 1
        end = torch.arange(8 * q, 8 * q + window.numel()) + sizes.index_select(0, i)
        ok = (window < limit) & (end <= total)
        index[8 * q : 8 * q + window.numel()] = i
        nxt[8 * q : 8 * q + window.numel()] = torch.where(ok, end, total + 1)
    return index, nxt  # from the end of the stream and from the error state: the error state


def _walk(nxt: torch.Tensor, steps: int) -> torch.Tensor:
    """``[0, nxt[0], nxt[nxt[0]], ...]``, ``steps + 1`` positions, by pointer doubling: log2(steps) gathers, no
    loop over codewords. While that pays, positions are relabelled as jumps are composed, keeping only those a
    jump reaches: decoding from any bit falls into step with the true codewords within a few dozen of them."""
    positions, jump, domain = torch.zeros(1, dtype=nxt.dtype), nxt, None  # domain: position of each label
    shrinking = True
    while True:
        positions = torch.cat([positions, jump.index_select(0, positions)])  # jump moves 2**i codewords ahead
        if positions.numel() >= steps + 1:
            break
        jump = jump.index_select(0, jump)
        compacted = _compact(jump, positions, domain) if shrinking else None
        shrinking = compacted is not None
        jump, positions, domain = compacted or (jump, positions, domain)
    positions = positions[: steps + 1]
    return positions if domain is None else domain.index_select(0, positions)


def _compact(jump: torch.Tensor, positions: torch.Tensor, domain: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Relabel to keep only the labels that ``jump`` reaches or ``positions`` holds (a set ``jump`` maps into
    itself), or ``None`` if that would keep more than 80% of them."""
    keep = torch.zeros(jump.numel(), dtype=torch.bool)
    keep[jump] = True
    keep[positions] = True
    rank = keep.cumsum(0, dtype=jump.dtype) - 1
    if int(rank[-1]) + 1 > 0.8 * jump.numel():
        return None
    kept = keep.nonzero().squeeze(1)
    domain = kept.to(jump.dtype) if domain is None else domain.index_select(0, kept)
    return rank.index_select(0, jump.index_select(0, kept)), rank.index_select(0, positions), domain


def huffman_decode(lengths: torch.Tensor, stream: torch.Tensor, numel: int) -> torch.Tensor:
    """Decode ``numel`` codes from a stream written by :func:`huffman_encode` with the code ``lengths``.

    Returns a 1-D uint8 tensor of codes. Raises a ``ValueError`` if the stream ends early, holds a bit pattern
    that is no codeword, or has bytes or non-zero bits left after the last code (truncated or corrupted data,
    or a wrong ``numel``).

    Example:
        >>> huffman_decode(torch.tensor([1, 2, 2, 0], dtype=torch.uint8), torch.tensor([104], dtype=torch.uint8), 5)
        tensor([0, 0, 0, 1, 2], dtype=torch.uint8)
    """
    values = _check_lengths(lengths)
    _check_bytes(stream, "stream")
    _check_numel(numel)
    device, stream = stream.device, stream.cpu()
    if numel == 0 or not any(values):
        if numel or stream.numel():
            raise ValueError(f"the stream has {stream.numel()} bytes and the code table {sum(map(bool, values))} "
                             f"symbols, but {numel} codes were asked for: the data is corrupted or numel is wrong")
        return torch.zeros(0, dtype=torch.uint8, device=device)
    index, nxt = _next_codeword(stream, values)
    positions = _walk(nxt, numel)
    _check_walk(positions, stream, numel)
    symbols = torch.tensor(_canonical_table(values)[0], dtype=torch.uint8)
    return symbols.index_select(0, index.index_select(0, positions[:-1]).long()).to(device)


def _check_walk(positions: torch.Tensor, stream: torch.Tensor, numel: int) -> None:
    """Raise a ``ValueError`` naming the first code that could not be decoded, or data after the last code."""
    total = 8 * stream.numel()
    failed = (positions > total).nonzero()
    if failed.numel():
        i = int(failed[0]) - 1  # codes 0..i-1 decoded; code i did not
        at = int(positions[i])
        why = "the stream ends there" if at == total else "the bits there match no codeword or run past the end"
        raise ValueError(f"could not decode code {i} of {numel} at bit {at} of {total}: {why}; the data is "
                         "truncated or corrupted, or numel is wrong")
    end = int(positions[-1])
    if -(-end // 8) != stream.numel() or (end % 8 and int(stream[-1]) >> (end % 8)):
        raise ValueError(f"{numel} codes end at bit {end} but the stream has {total} bits with data after them: "
                         "the data is corrupted or numel is wrong")
