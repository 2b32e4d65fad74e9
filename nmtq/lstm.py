"""An LSTM encoder-decoder with Luong attention as a Hugging Face seq2seq model: the small student of Kim & Rush
(2016) and Polino, Pascanu & Alistarh (2018).

Encoder: embedding, then a (bi)LSTM over the right-padded source. Decoder: the same embedding (the vocabulary is
joint), an LSTM started from a linear bridge of the encoder's final states, Luong attention (``general`` or ``dot``)
over the encoder outputs with source padding masked, ``tanh(W_c [context; h])`` and an output projection tied to
the embedding. There is no input feeding, so training runs the decoder LSTM over the whole target in one call.
``generate`` (greedy, sampling, beam search) decodes incrementally: the decoder's recurrent state travels between
steps as an ``LstmCache`` (:mod:`nmtq.lstm_cache`), a transformers ``Cache`` that beam search reorders with
``reorder_cache``.

Importing this module registers ``nmtq_lstm`` with ``AutoConfig`` and ``AutoModelForSeq2SeqLM``. Folders saved with
the earlier spelling ``nmtq-lstm`` load too (as ``nmtq_lstm``, which is what they are saved back as).

Example:
    >>> import torch
    >>> config = LstmSeq2SeqConfig(vocab_size=12, d_model=8, hidden_size=16, encoder_layers=1, decoder_layers=1)
    >>> model = LstmForConditionalGeneration(config).eval()
    >>> out = model(input_ids=torch.tensor([[3, 4, 0]]), labels=torch.tensor([[5, 0]]))
    >>> tuple(out.logits.shape), bool(out.loss > 0)
    ((1, 2, 12), True)
    >>> model.generate(torch.tensor([[3, 4, 0]]), num_beams=2, max_new_tokens=3).shape[0]
    1
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoConfig, AutoModelForSeq2SeqLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from .errors import NmtqError
from .lstm_cache import LstmCache

__all__ = ["LstmCache", "LstmForConditionalGeneration", "LstmSeq2SeqConfig", "is_lstm_model_type", "register"]

ATTENTION_TYPES = ("general", "dot")


class LstmSeq2SeqConfig(PreTrainedConfig):
    """Sizes of an LSTM encoder-decoder over one joint vocabulary; checked when built (``ValueError`` if wrong).

    A bidirectional encoder gives each direction ``hidden_size // 2`` units (as OpenNMT does), so the encoder
    outputs and the decoder states both have ``hidden_size`` units. ``pad_token_id`` defaults to the last id and
    ``eos_token_id`` to 0 (nmtq's tokenizer layout); ``decoder_start_token_id`` defaults to the pad id (as Marian).
    ``tie_word_embeddings`` ties the output projection to the embedding, which source and target always share.
    ``max_position_embeddings`` is not used by the network: it is the longest sequence callers should feed or
    generate (nmtq's evaluation reads it). ``init_range`` is the OpenNMT-style uniform init ``U(-r, r)``.

    Example:
        >>> config = LstmSeq2SeqConfig(vocab_size=100, d_model=32, hidden_size=64)
        >>> config.pad_token_id, config.decoder_start_token_id, config.eos_token_id, config.is_encoder_decoder
        (99, 99, 0, True)
    """

    model_type = "nmtq_lstm"
    # the cache field of the outputs, which the Trainer's evaluation drops (named past_key_values before 5.24)
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 8000
    d_model: int = 256
    hidden_size: int = 512
    encoder_layers: int = 2
    decoder_layers: int = 2
    bidirectional_encoder: bool = True
    attention_type: str = "general"
    dropout: float = 0.1
    init_range: float = 0.1
    max_position_embeddings: int = 512
    pad_token_id: int | None = None
    eos_token_id: int | None = 0
    decoder_start_token_id: int | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = True
    is_encoder_decoder: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.pad_token_id is None and _is_int(self.vocab_size):
            self.pad_token_id = self.vocab_size - 1
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        self._check()
        super().__post_init__(**kwargs)

    def _check(self) -> None:
        for name in ("vocab_size", "d_model", "hidden_size", "encoder_layers", "decoder_layers",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise NmtqError(f"{name}={value!r} must be a positive integer")
        if self.bidirectional_encoder and self.hidden_size % 2:
            raise NmtqError(f"hidden_size={self.hidden_size} must be even with bidirectional_encoder=True (each "
                             "direction gets half); pass an even size or bidirectional_encoder=False")
        if self.attention_type not in ATTENTION_TYPES:
            raise NmtqError(f"attention_type={self.attention_type!r}: pass one of {', '.join(ATTENTION_TYPES)}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise NmtqError(f"dropout={self.dropout!r} must lie in [0, 1)")
        if not self.init_range > 0:
            raise NmtqError(f"init_range={self.init_range!r} must be positive (OpenNMT uses 0.1)")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value < self.vocab_size:
                raise NmtqError(f"{name}={value!r} must be a token id in [0, {self.vocab_size}) "
                                 "(vocab_size counts every id, special tokens included)")
        if self.is_encoder_decoder is not True:
            raise NmtqError("is_encoder_decoder must be True: this is an encoder-decoder model")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def source_lengths(attention_mask: torch.Tensor | None, batch_size: int, seq_len: int,
                   device: torch.device) -> torch.Tensor:
    """Length of each right-padded source; an all-padding row counts as length 1 (its first token is read).

    Example:
        >>> source_lengths(torch.tensor([[1, 1, 0], [0, 0, 0]]), 2, 3, torch.device("cpu")).tolist()
        [2, 1]
    """
    if attention_mask is None:
        return torch.full((batch_size,), seq_len, dtype=torch.long, device=device)
    lengths = attention_mask.long().sum(-1)
    positions = torch.arange(seq_len, device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions < lengths[:, None]):
        raise NmtqError("attention_mask must be right-padded (ones, then zeros) for the LSTM encoder; pad sources "
                         "on the right (tokenizer.padding_side = 'right')")
    return lengths.clamp(min=1).to(device)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: ``decoder_start_token_id``, then ``labels[:, :-1]`` with -100 as pad.

    Example:
        >>> shift_tokens_right(torch.tensor([[5, 6, -100]]), pad_token_id=9, decoder_start_token_id=9).tolist()
        [[9, 5, 6]]
    """
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def _token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over labels that are not -100, divided by their number (or ``num_items_in_batch``,
    the count over all gradient-accumulation steps that the Trainer passes)."""
    total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(logits.device), ignore_index=-100,
                            reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum().clamp(min=1)
    return total / count


class LstmEncoder(nn.Module):
    """Embedding and a (bi)LSTM over packed sources; ``forward`` gives a ``BaseModelOutput`` whose
    ``last_hidden_state`` is ``(batch, source_len, hidden_size)`` with zeros at padded positions."""

    main_input_name = "input_ids"  # read by generate

    def __init__(self, config: LstmSeq2SeqConfig) -> None:
        super().__init__()
        directions = 2 if config.bidirectional_encoder else 1
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.lstm = nn.LSTM(config.d_model, config.hidden_size // directions, num_layers=config.encoder_layers,
                            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
                            bidirectional=config.bidirectional_encoder, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True, **kwargs: Any) -> BaseModelOutput | tuple:
        batch_size, seq_len = input_ids.shape
        lengths = source_lengths(attention_mask, batch_size, seq_len, input_ids.device)
        embedded = self.dropout(self.embed_tokens(input_ids))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=seq_len)
        output = BaseModelOutput(last_hidden_state=outputs)
        return output if return_dict else output.to_tuple()


class LstmDecoder(nn.Module):
    """LSTM started from a bridge of the encoder's final states, then Luong attention; it reads embedded targets
    and returns the attentional vectors ``tanh(W_c [context; h])`` of size ``d_model`` and the new state."""

    def __init__(self, config: LstmSeq2SeqConfig) -> None:
        super().__init__()
        self.bidirectional_encoder = config.bidirectional_encoder
        hidden, layers = config.hidden_size, config.decoder_layers
        self.bridge = nn.Linear(hidden, 2 * layers * hidden)
        self.lstm = nn.LSTM(config.d_model, hidden, num_layers=layers, batch_first=True,
                            dropout=config.dropout if layers > 1 else 0.0)
        self.attention_query = nn.Linear(hidden, hidden, bias=False) if config.attention_type == "general" else None
        self.attention_output = nn.Linear(2 * hidden, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def initial_state(self, memory: torch.Tensor, attention_mask: torch.Tensor | None) -> LstmCache:
        """``tanh(bridge(final encoder states))``: forward direction at the last source token, backward at the
        first (exactly the top layer's final states of the packed LSTM), for every decoder layer."""
        batch_size, seq_len, hidden = memory.shape
        lengths = source_lengths(attention_mask, batch_size, seq_len, memory.device)
        final = memory[torch.arange(batch_size, device=memory.device), lengths - 1]
        if self.bidirectional_encoder:
            final = torch.cat([final[:, : hidden // 2], memory[:, 0, hidden // 2:]], dim=-1)
        states = torch.tanh(self.bridge(final)).view(batch_size, 2, -1, hidden).permute(1, 2, 0, 3)
        return LstmCache(states[0].contiguous(), states[1].contiguous())

    def forward(self, embedded: torch.Tensor, memory: torch.Tensor, attention_mask: torch.Tensor | None,
                state: LstmCache) -> tuple[torch.Tensor, LstmCache]:
        outputs, (hidden, cell) = self.lstm(self.dropout(embedded), (state.hidden, state.cell))
        query = self.attention_query(outputs) if self.attention_query is not None else outputs
        scores = query @ memory.transpose(1, 2)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask[:, None, :].bool(), torch.finfo(scores.dtype).min)
        context = scores.softmax(dim=-1) @ memory
        attentional = torch.tanh(self.attention_output(torch.cat([context, outputs], dim=-1)))
        return self.dropout(attentional), LstmCache(hidden, cell, state.seen_tokens + embedded.shape[1])


class LstmForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """LSTM encoder-decoder with attention, used like ``MarianMTModel``: ``forward`` takes ``labels`` (the loss
    is token cross-entropy, -100 ignored) and ``generate`` does greedy, sampling and beam search.

    ``generate`` decodes incrementally: the first step runs the decoder from the bridged encoder state over the
    start token and returns its ``LstmCache``; each later step feeds only the last token and that cache (see
    ``LstmCache`` for the contract with ``generate``). With ``use_cache=False`` every step reruns the decoder over
    the whole prefix (exact too). Nothing private of ``GenerationMixin`` is overridden.

    Example:
        >>> config = LstmSeq2SeqConfig(vocab_size=10, d_model=8, hidden_size=8, encoder_layers=1, decoder_layers=1)
        >>> model = LstmForConditionalGeneration(config)
        >>> model.lm_head.weight is model.get_input_embeddings().weight
        True
    """

    config_class = LstmSeq2SeqConfig
    base_model_prefix = "model"  # no separate base model: the encoder and decoder live on this class
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "encoder.embed_tokens.weight"}

    def __init__(self, config: LstmSeq2SeqConfig) -> None:
        super().__init__(config)
        self.encoder = LstmEncoder(config)
        self.decoder = LstmDecoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Embedding, nn.Linear, nn.LSTM)):
            for parameter in module.parameters(recurse=False):
                init.uniform_(parameter, -self.config.init_range, self.config.init_range)

    def get_encoder(self) -> LstmEncoder:
        return self.encoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.encoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder inputs: labels shifted right behind ``decoder_start_token_id``."""
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.LongTensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                encoder_outputs: BaseModelOutput | tuple | None = None, cache: Cache | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                return_dict: bool | None = None, past_key_values: Cache | None = None, **kwargs: Any
                ) -> Seq2SeqLMOutput | tuple:
        """Logits for ``decoder_input_ids`` (from ``labels`` when absent); the decoder is causal, so
        ``decoder_attention_mask`` is not needed and ignored. ``kwargs`` may carry ``num_items_in_batch``.

        ``cache`` (or its name before transformers 5.24, ``past_key_values``) continues from an ``LstmCache``. An
        empty cache of another kind, as ``generate`` makes before the first step, starts from the encoder's state.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise NmtqError("pass decoder_input_ids or labels (decoder inputs are labels shifted right)")
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if encoder_outputs is None:
            if input_ids is None:
                raise NmtqError("pass input_ids (the source) or encoder_outputs from model.get_encoder()")
            encoder_outputs = self.encoder(input_ids, attention_mask)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        memory = encoder_outputs.last_hidden_state
        state = self._decoder_state(cache if cache is not None else past_key_values, memory, attention_mask)
        embedded = self.encoder.embed_tokens(decoder_input_ids)
        attentional, state = self.decoder(embedded, memory, attention_mask, state)
        logits = self.lm_head(attentional)
        loss = None
        if labels is not None:
            loss = _token_cross_entropy(logits, labels, kwargs.get("num_items_in_batch"))
        use_cache = use_cache if use_cache is not None else self.config.use_cache and labels is None
        output = Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=memory,
                                 **{OUTPUT_CACHE_FIELD: state if use_cache else None})
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _decoder_state(self, cache: Cache | None, memory: torch.Tensor,
                       attention_mask: torch.Tensor | None) -> LstmCache:
        """The state to continue from: ``cache`` itself, or the bridged encoder state when nothing was decoded."""
        if isinstance(cache, LstmCache):
            return cache
        if cache is None or (isinstance(cache, Cache) and cache.get_seq_length() == 0):
            return self.decoder.initial_state(memory, attention_mask)
        raise NmtqError(f"the cache is a {type(cache).__name__} holding decoded tokens; pass the LstmCache returned "
                         "by a previous forward(use_cache=True), or None to start decoding")


# Seq2SeqLMOutput's cache field: ``cache`` since transformers 5.24, ``past_key_values`` before (read off the dataclass)
OUTPUT_CACHE_FIELD = "cache" if "cache" in {field.name for field in fields(Seq2SeqLMOutput)} else "past_key_values"


LEGACY_MODEL_TYPE = "nmtq-lstm"  # the spelling before issue #16; folders saved with it still load


class _LegacyLstmSeq2SeqConfig(LstmSeq2SeqConfig):
    """What ``AutoConfig`` finds for a ``config.json`` of ``model_type`` ``nmtq-lstm``: reading one gives the
    :class:`LstmSeq2SeqConfig` it describes, so the folder loads, and saves back, as ``nmtq_lstm``."""

    model_type = LEGACY_MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        return LstmSeq2SeqConfig.from_dict({**config_dict, "model_type": LstmSeq2SeqConfig.model_type}, **kwargs)


def is_lstm_model_type(model_type: str | None) -> bool:
    """Whether a ``config.json``'s ``model_type`` is nmtq's LSTM student, in either spelling.

    Example:
        >>> is_lstm_model_type("nmtq_lstm"), is_lstm_model_type("nmtq-lstm"), is_lstm_model_type("marian")
        (True, True, False)
    """
    return model_type in (LstmSeq2SeqConfig.model_type, LEGACY_MODEL_TYPE)


def register() -> None:
    """Make ``AutoConfig`` and ``AutoModelForSeq2SeqLM`` resolve ``nmtq_lstm`` (and the earlier ``nmtq-lstm``);
    calling it again is harmless.

    Example:
        >>> register()
        >>> type(AutoConfig.for_model("nmtq_lstm", vocab_size=10)).__name__
        'LstmSeq2SeqConfig'
    """
    AutoConfig.register(LstmSeq2SeqConfig.model_type, LstmSeq2SeqConfig, exist_ok=True)
    AutoConfig.register(LEGACY_MODEL_TYPE, _LegacyLstmSeq2SeqConfig, exist_ok=True)
    AutoModelForSeq2SeqLM.register(LstmSeq2SeqConfig, LstmForConditionalGeneration, exist_ok=True)


register()
