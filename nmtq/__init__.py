"""nmtq: compress neural machine translation models by distillation and quantization."""

__version__ = "0.1.0"
