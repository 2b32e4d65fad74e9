"""The quantizer's arguments, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from .functional import check_bits, check_bucket_size, check_scaling

POINTS_INIT = ("quantile", "uniform")


@dataclass
class QuantizerConfig:
    """What to quantize and how. Every field is also a command-line argument of the trainers.

    Example:
        >>> QuantizerConfig(bits=4, bucket_size="row", scaling="absmax").bucket_size
        'row'
    """

    bits: int = field(default=4, metadata={"help": "Bits per quantized weight (1-16; absmax needs 2+)."})
    bucket_size: int | str | None = field(
        default=256,
        metadata={"help": "Weights per bucket with its own scale: an integer, 'row' (one bucket per output "
                          "row, as inference engines do) or None (one bucket per tensor)."},
    )
    scaling: str = field(
        default="linear",
        metadata={"help": "'linear': each bucket's [min, max] onto 2**bits uniform levels (Polino et al.); "
                          "'absmax': symmetric signed levels with zero exact (CTranslate2's int8 with 'row')."},
    )
    stochastic: bool = field(
        default=False, metadata={"help": "Unbiased stochastic rounding in training mode (eval always rounds)."}
    )
    include: list[str] = field(
        default_factory=lambda: ["*"], metadata={"help": "Glob patterns of parameter names to quantize."}
    )
    exclude: list[str] = field(
        default_factory=list, metadata={"help": "Glob patterns of parameter names to keep in full precision."}
    )
    min_size: int = field(
        default=1, metadata={"help": "Quantize only parameters with at least this many elements."}
    )
    quantize_vectors: bool = field(
        default=False,
        metadata={"help": "Also quantize 1-D parameters (biases, norm weights); kept in full precision by default."},
    )
    quantize_frozen: bool = field(
        default=False,
        metadata={"help": "Also quantize parameters with requires_grad=False (fixed tables such as sinusoidal "
                          "positions are skipped by default)."},
    )
    keep_first_last: bool = field(
        default=False,
        metadata={"help": "Keep the first and the last selected parameters (in module order) in full precision."},
    )
    learn_points: bool = field(
        default=False,
        metadata={"help": "Differentiable quantization: learn 2**bits quantization points per tensor by SGD."},
    )
    activation_bits: int | None = field(
        default=None,
        metadata={"help": "While the quantizer is attached, also round the input of every Linear layer whose weight "
                          "is quantized, per row (token) onto this many bits with absmax scaling, as int8 engines "
                          "(CTranslate2) do at run time; nothing more is stored. None: weights only."},
    )
    points_init: str = field(
        default="quantile", metadata={"help": "Initial points: 'quantile' of the scaled weights or 'uniform'."}
    )

    def __post_init__(self) -> None:
        check_scaling(self.scaling)
        check_bits(self.bits, self.scaling)
        if isinstance(self.bucket_size, str) and self.bucket_size.isdigit():
            self.bucket_size = int(self.bucket_size)
        if self.bucket_size in ("none", "None"):
            self.bucket_size = None
        check_bucket_size(self.bucket_size)
        if isinstance(self.include, str) or isinstance(self.exclude, str):
            raise ValueError("include and exclude take a list of glob patterns, e.g. ['*.weight'], not a string")
        self.include, self.exclude = list(self.include), list(self.exclude)
        if not self.include:
            raise ValueError("include is empty, so nothing would be quantized: pass at least one pattern, e.g. '*'")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"min_size={self.min_size!r}: pass a non-negative integer number of elements")
        if self.points_init not in POINTS_INIT:
            raise ValueError(f"points_init={self.points_init!r}: pass one of {POINTS_INIT}")
        if self.learn_points and self.scaling != "linear":
            raise ValueError(
                "learn_points needs scaling='linear': points are positions inside each bucket's [min, max]"
            )
        if self.activation_bits is not None:
            try:
                check_bits(self.activation_bits, "absmax")
            except ValueError as err:
                raise ValueError(f"activation_bits: {err}") from None
        if self.learn_points and self.stochastic:
            raise ValueError("learn_points maps each weight to its nearest point; stochastic rounding does not apply")
