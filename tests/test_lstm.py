"""Tests of nmtq.lstm: the loss against plain-Python cross-entropy, greedy and beam search against hand-written
decoders and a brute-force search, padding invariance, overfitting, save/load and config errors."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSeq2SeqLM
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache

from nmtq.lstm import OUTPUT_CACHE_FIELD, LstmCache, LstmForConditionalGeneration, LstmSeq2SeqConfig, register

EOS, PAD = 0, 15


def tiny_model(seed: int = 0, **overrides) -> LstmForConditionalGeneration:
    """A seeded two-layer model in eval mode; a wide init range so that its predictions are far from uniform."""
    sizes = dict(vocab_size=16, d_model=8, hidden_size=12, encoder_layers=2, decoder_layers=2, dropout=0.0,
                 init_range=0.4, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    return LstmForConditionalGeneration(LstmSeq2SeqConfig(**{**sizes, **overrides})).eval()


@functools.cache
def shared_model() -> LstmForConditionalGeneration:
    """A model whose greedy outputs vary with the source, some ending in EOS and some not (seed picked for that)."""
    return tiny_model(seed=0)


def pad_batch(rows: list[list[int]], filler: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``rows`` with ``filler``; returns ``input_ids`` and ``attention_mask``."""
    width = max(map(len, rows))
    ids = torch.tensor([row + [filler] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return ids, mask


def sequence_log_prob(model, source: list[int], target: list[int]) -> float:
    """Sum of the log-probabilities of ``target`` (the tokens after the start token) under ``forward``."""
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([[start] + target[:-1]]),
                       use_cache=False).logits[0]
    return float(sum(torch.log_softmax(logits[i].double(), -1)[token] for i, token in enumerate(target)))


def strip(row: torch.Tensor) -> list[int]:
    """Generated ids without the start token, up to and including the first EOS."""
    ids = row.tolist()[1:]
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def greedy_reference(model, source: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding written out: rerun forward over the whole prefix and take the argmax."""
    prefix = [model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([prefix]),
                           use_cache=False).logits
            prefix.append(int(logits[0, -1].argmax()))
            if prefix[-1] == EOS:
                break
    return prefix[1:]


def test_loss_is_token_cross_entropy_with_ignored_labels_masked():
    model = tiny_model()
    input_ids, attention_mask = pad_batch([[3, 4, 5, 6], [7, 8]])
    labels = torch.tensor([[9, 10, EOS], [11, EOS, -100]])
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert torch.isfinite(out.loss)
    logits = out.logits.tolist()
    terms = []
    for b, s in itertools.product(range(2), range(3)):
        if labels[b, s] != -100:
            row = logits[b][s]
            terms.append(math.log(sum(math.exp(x) for x in row)) - row[int(labels[b, s])])
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # the Trainer's count over gradient-accumulation steps replaces the batch's own count
    halved = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=10)
    assert halved.loss.item() == pytest.approx(sum(terms) / 10, rel=1e-5)


def test_labels_are_shifted_right_behind_the_start_token():
    model = tiny_model()
    labels = torch.tensor([[9, 10, EOS], [11, EOS, -100]])
    assert model.prepare_decoder_input_ids_from_labels(labels).tolist() == [[PAD, 9, 10], [PAD, 11, EOS]]


@pytest.mark.parametrize("overrides", [{}, {"bidirectional_encoder": False, "attention_type": "dot"},
                                       {"tie_word_embeddings": False}])
def test_gradient_reaches_every_parameter(overrides):
    model = tiny_model(**overrides, dropout=0.1).train()
    input_ids, attention_mask = pad_batch([[3, 4, 5, 6], [7, 8]])
    model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([[9, 10, EOS], [11, EOS, -100]])
          ).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=2, max_size=4), filler=st.integers(0, 15),
       target_len=st.integers(1, 4))
def test_source_padding_does_not_change_outputs(lengths, filler, target_len):
    model = shared_model()
    torch.manual_seed(sum(lengths))
    sources = [torch.randint(1, 15, (n,)).tolist() for n in lengths]
    decoder_input_ids = torch.randint(0, 16, (len(lengths), target_len))
    input_ids, attention_mask = pad_batch(sources, filler)  # whatever token fills the padding
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        for i, source in enumerate(sources):
            alone = model(input_ids=torch.tensor([source]), decoder_input_ids=decoder_input_ids[i:i + 1])
            torch.testing.assert_close(batched.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_left_padding_is_refused():
    with pytest.raises(ValueError, match="right-padded"):
        shared_model()(input_ids=torch.tensor([[PAD, 3, 4]]), attention_mask=torch.tensor([[0, 1, 1]]),
                       decoder_input_ids=torch.tensor([[PAD]]))


def test_decoding_token_by_token_with_the_state_equals_one_pass():
    model = shared_model()
    input_ids, attention_mask = pad_batch([[3, 4, 5, 6], [7, 8]])
    decoder_input_ids = torch.tensor([[PAD, 9, 10, 11], [PAD, 12, 13, 1]])
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        state, steps = None, []
        for t in range(4):
            # the argument's name before transformers 5.24 (past_key_values) is accepted too
            name = "cache" if t % 2 else "past_key_values"
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                        decoder_input_ids=decoder_input_ids[:, t:t + 1], **{name: state})
            state = out[OUTPUT_CACHE_FIELD]
            steps.append(out.logits)
    assert isinstance(state, LstmCache) and isinstance(state, Cache) and state.get_seq_length() == 4
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
    # an empty cache of transformers' own (what generate makes before the first step) starts from the encoder
    with torch.no_grad():
        fresh = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      cache=EncoderDecoderCache(DynamicCache(), DynamicCache()))
    torch.testing.assert_close(fresh.logits, full)
    with pytest.raises(ValueError, match="LstmCache"):
        model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, cache=(state.hidden, state.cell))


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generate_equals_a_hand_written_greedy_loop(use_cache):
    # in transformers, num_beams=1 without sampling is greedy decoding
    model = shared_model()
    sources = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12], [13, 1, 2, 3]]
    input_ids, attention_mask = pad_batch(sources)
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, do_sample=False,
                               max_new_tokens=8, use_cache=use_cache)
    expected = [greedy_reference(model, source, 8) for source in sources]
    assert [strip(row) for row in generated] == expected
    assert any(EOS in row for row in expected) and any(EOS not in row for row in expected)  # both stops covered


def test_beam_search_covering_every_prefix_finds_the_most_probable_sequence():
    # 4 tokens besides EOS, 3 steps, EOS held back by min_new_tokens: 16 beams keep every 2-token prefix, so
    # beam search must find the best of the 64 sequences, which greedy decoding misses for this seed
    model = tiny_model(seed=0, vocab_size=5, pad_token_id=4, init_range=1.0)
    source = [1, 2, 3]
    scores = {c: sequence_log_prob(model, source, list(c)) for c in itertools.product((1, 2, 3, 4), repeat=3)}
    best = max(scores, key=scores.get)
    lengths = dict(max_new_tokens=3, min_new_tokens=3)
    out = model.generate(input_ids=torch.tensor([source]), num_beams=16, length_penalty=0.0, **lengths,
                         return_dict_in_generate=True, output_scores=True)
    assert tuple(strip(out.sequences[0])) == best
    assert out.sequences_scores[0].item() == pytest.approx(scores[best], abs=1e-5)
    assert tuple(strip(model.generate(input_ids=torch.tensor([source]), num_beams=1, **lengths)[0])) != best


def test_beam_search_scores_at_least_greedy():
    # not a theorem for beam search, but it should hold on these inputs; equal lengths make the scores comparable
    model = shared_model()
    torch.manual_seed(7)
    sources = [torch.randint(1, 15, (n,)).tolist() for n in (5, 2, 7, 3)]
    input_ids, attention_mask = pad_batch(sources)
    lengths = dict(max_new_tokens=6, min_new_tokens=6)
    beams = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, length_penalty=0.0,
                           **lengths)
    greedy = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, **lengths)
    gains = [sequence_log_prob(model, source, strip(beam)) - sequence_log_prob(model, source, strip(best_first))
             for source, beam, best_first in zip(sources, beams, greedy)]
    assert min(gains) >= -1e-6 and max(gains) > 0


def test_beam_search_on_a_padded_batch_equals_one_input_at_a_time():
    model = shared_model()
    sources = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12], [13, 1, 2, 3]]
    input_ids, attention_mask = pad_batch(sources)
    batched = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, max_new_tokens=8)
    alone = [model.generate(input_ids=torch.tensor([source]), num_beams=4, max_new_tokens=8)[0] for source in sources]
    assert [strip(row) for row in batched] == [strip(row) for row in alone]
    assert len({tuple(strip(row)) for row in alone}) > 1 and any(EOS in strip(row) for row in alone)


def test_overfits_eight_pairs_and_greedy_decodes_them():
    torch.manual_seed(0)
    sources = [torch.randint(1, 15, (n,)).tolist() for n in (3, 4, 5, 6, 3, 4, 5, 6)]
    targets = [source[::-1][:4] + [EOS] for source in sources]  # reverse, truncate: needs attention and the bridge
    model = tiny_model(d_model=32, hidden_size=32, encoder_layers=1, decoder_layers=1, init_range=0.1).train()
    input_ids, attention_mask = pad_batch(sources)
    labels, _ = pad_batch(targets, filler=-100)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
    model.eval()
    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, max_new_tokens=8)
    assert [strip(row) for row in generated] == targets, f"final loss {loss.item():.4f}"


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_save_pretrained_round_trips_through_auto_classes(tmp_path, tie_word_embeddings):
    model = tiny_model(tie_word_embeddings=tie_word_embeddings)
    model.save_pretrained(tmp_path)
    register()  # importing nmtq.lstm registered it already; calling again is harmless
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LstmForConditionalGeneration
    assert (loaded.lm_head.weight is loaded.encoder.embed_tokens.weight) is tie_word_embeddings
    assert ("lm_head.weight" in load_file(tmp_path / "model.safetensors")) is not tie_word_embeddings
    without_path = [{k: v for k, v in c.to_dict().items() if k != "_name_or_path"}
                    for c in (AutoConfig.from_pretrained(tmp_path), model.config)]
    assert without_path[0] == without_path[1]
    for (name, tensor), (loaded_name, loaded_tensor) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == loaded_name and torch.equal(tensor, loaded_tensor), name
    input_ids, attention_mask = pad_batch([[3, 4, 5], [6]])
    decoder_input_ids = torch.tensor([[PAD, 7], [PAD, 8]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=input_ids, attention_mask=attention_mask,
                                 decoder_input_ids=decoder_input_ids).logits,
                           loaded(input_ids=input_ids, attention_mask=attention_mask,
                                  decoder_input_ids=decoder_input_ids).logits)
    settings_ = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=2, max_new_tokens=6)
    assert torch.equal(model.generate(**settings_), loaded.generate(**settings_))


def test_a_folder_saved_with_the_old_model_type_spelling_loads_and_saves_back_new(tmp_path):
    import json

    from nmtq.models import load_model

    model = tiny_model()
    model.save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["model_type"] == "nmtq_lstm"
    config_file.write_text(json.dumps({**config, "model_type": "nmtq-lstm"}))  # as nmtq wrote it before issue #16
    input_ids, attention_mask = pad_batch([[3, 4, 5], [6]])
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([[7, 8]] * 2)).logits
    for loaded in (AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "old"), load_model(tmp_path / "old")):
        assert type(loaded) is LstmForConditionalGeneration and loaded.config.model_type == "nmtq_lstm"
        with torch.no_grad():
            assert torch.equal(loaded.eval()(input_ids=input_ids, attention_mask=attention_mask,
                                             labels=torch.tensor([[7, 8]] * 2)).logits, expected)
    loaded.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model_type"] == "nmtq_lstm"


def test_config_defaults_follow_the_tokenizer_layout():
    config = LstmSeq2SeqConfig(vocab_size=60)
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (59, 0, 59)
    assert config.is_encoder_decoder and config.tie_word_embeddings and config.bidirectional_encoder


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"vocab_size": 0}, "vocab_size=0 must be a positive integer"),
    ({"hidden_size": 2.5}, "hidden_size=2.5 must be a positive integer"),
    ({"encoder_layers": True}, "encoder_layers=True must be a positive integer"),
    ({"hidden_size": 7}, "must be even with bidirectional_encoder=True"),
    ({"attention_type": "mlp"}, "pass one of general, dot"),
    ({"dropout": 1.0}, r"dropout=1.0 must lie in \[0, 1\)"),
    ({"dropout": "0.1"}, r"dropout='0.1' must lie in \[0, 1\)"),
    ({"init_range": 0.0}, "init_range=0.0 must be positive"),
    ({"pad_token_id": 10}, r"pad_token_id=10 must be a token id in \[0, 10\)"),
    ({"eos_token_id": -1}, "eos_token_id=-1 must be a token id"),
    ({"decoder_start_token_id": 12}, "decoder_start_token_id=12 must be a token id"),
    ({"is_encoder_decoder": False}, "is_encoder_decoder must be True"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LstmSeq2SeqConfig(**{"vocab_size": 10, "hidden_size": 8, **kwargs})


def test_beam_search_returns_its_beams_best_first():
    model = shared_model()
    input_ids, attention_mask = pad_batch([[3, 4, 5, 6, 7], [8, 9]])
    settings_ = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, max_new_tokens=6,
                     min_new_tokens=6, length_penalty=0.0)
    best = model.generate(**settings_)
    out = model.generate(**settings_, num_return_sequences=3, return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape[0] == 6 and torch.equal(out.sequences[::3], best)
    scores = out.sequences_scores.view(2, 3)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    sources = [[3, 4, 5, 6, 7], [8, 9]]
    for i, (row, score) in enumerate(zip(out.sequences, out.sequences_scores)):
        assert score.item() == pytest.approx(sequence_log_prob(model, sources[i // 3], strip(row)), abs=1e-5)


def test_sampling_several_sequences_per_source_uses_each_sources_state():
    model = shared_model()
    input_ids, attention_mask = pad_batch([[3, 4, 5, 6, 7], [8, 9]])
    torch.manual_seed(0)
    sampled = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=1,
                             num_return_sequences=2, max_new_tokens=6)
    greedy = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, max_new_tokens=6)
    # top_k=1 sampling is greedy: each source's copies must equal its greedy output
    assert [strip(row) for row in sampled] == [strip(row) for row in greedy.repeat_interleave(2, dim=0)]


def test_assisted_generation_is_refused_as_the_state_cannot_be_cropped():
    model = shared_model()
    with pytest.raises(ValueError, match="crop"):
        model.generate(input_ids=torch.tensor([[3, 4, 5]]), assistant_model=tiny_model(seed=1), max_new_tokens=4)
    with pytest.raises(ValueError, match="cannot be cropped"):
        LstmCache(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), seen_tokens=2).crop(1)
