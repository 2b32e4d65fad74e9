"""The LSTM student's decoder state as a transformers ``Cache``: what ``generate`` carries between decoding steps
(:mod:`nmtq.lstm`), reordered by beam search.

Example:
    >>> cache = LstmCache(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), seen_tokens=1)
    >>> cache
    LstmCache(hidden=(1, 2, 4), seen_tokens=1)
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .errors import NmtqError


class LstmCache(Cache):
    """The decoder LSTM's ``(hidden, cell)``, each ``(layers, batch, hidden_size)``, after ``seen_tokens`` tokens,
    as a transformers ``Cache``.

    ``forward(use_cache=True)`` returns it in its output's cache field; passing it back continues decoding from
    there. ``generate`` relies on it through the documented ``Cache`` protocol alone (transformers 5.0 to 5.24):

    - it passes the cache to ``forward`` (the argument ``cache``, called ``past_key_values`` before 5.24) and takes
      the one ``forward`` returns in its output for the next step. Before the first step it may pass an empty
      cache of its own (``DynamicCache``, ``EncoderDecoderCache``): any empty ``Cache`` means nothing was decoded
      yet, and ``forward`` starts from the encoder's bridged state;
    - ``get_seq_length`` tells it how many target tokens the state has read, so that it feeds only the new one;
    - beam search calls ``reorder_cache`` with the surviving beams; ``batch_repeat_interleave`` and
      ``batch_select_indices`` expand or select rows;
    - ``is_compileable`` is False (no static shapes to compile) and ``is_croppable`` is False: a recurrent state
      cannot be rolled back, so ``crop`` raises and assisted decoding is refused.

    The base class's list of attention layers stays empty: the state lives in two tensors.

    Example:
        >>> cache = LstmCache(torch.arange(3.0).view(1, 3, 1), torch.zeros(1, 3, 1), seen_tokens=2)
        >>> cache.reorder_cache(torch.tensor([2, 2, 0]))
        >>> cache.hidden.flatten().tolist(), cache.get_seq_length(), cache.batch_size
        ([2.0, 2.0, 0.0], 2, 3)
    """

    def __init__(self, hidden: torch.Tensor, cell: torch.Tensor, seen_tokens: int = 0) -> None:
        super().__init__(layers=[])
        if hidden.shape != cell.shape or hidden.dim() != 3:
            raise NmtqError(f"hidden {tuple(hidden.shape)} and cell {tuple(cell.shape)} must both be "
                             "(layers, batch, hidden_size)")
        self.hidden, self.cell, self.seen_tokens = hidden, cell, seen_tokens

    def __repr__(self) -> str:
        return f"LstmCache(hidden={tuple(self.hidden.shape)}, seen_tokens={self.seen_tokens})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Target tokens the state has read (what ``generate`` asks a cache)."""
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep, in place, the rows ``beam_idx`` (one per surviving beam) of the state."""
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep, in place, the rows ``indices`` of the state."""
        self.hidden = self.hidden.index_select(1, indices.to(self.hidden.device))
        self.cell = self.cell.index_select(1, indices.to(self.cell.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each row ``repeats`` times, in place (``generate`` expanding a batch)."""
        self.hidden = self.hidden.repeat_interleave(repeats, dim=1)
        self.cell = self.cell.repeat_interleave(repeats, dim=1)

    def crop(self, tokens_to_remove: int) -> None:
        raise NmtqError("an LSTM state cannot be cropped back to an earlier token: decode without assisted "
                         "generation (no assistant_model or prompt_lookup_num_tokens)")

    def reset(self) -> None:
        self.hidden, self.cell, self.seen_tokens = torch.zeros_like(self.hidden), torch.zeros_like(self.cell), 0

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[1]

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False
