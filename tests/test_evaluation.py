"""Tests of nmtq.evaluation on a tiny Marian model built from a config, each checked against an independent
computation: generate one sentence at a time, a hand-written greedy loop, per-sentence losses, and the
sacrebleu command line."""

from __future__ import annotations

import importlib.metadata
import json
import math
import subprocess
import sys
import types

import pytest
import torch

from nmtq.evaluation import (
    corpus_scores,
    evaluate_directory,
    evaluate_model,
    format_metrics,
    perplexity,
    translate,
)
from nmtq.tokenizer import train_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")

PAIRS = [
    ("Das Haus ist klein.", "The house is small."),
    ("Der Hund schläft.", "The dog is sleeping."),
    ("Ich habe eine Katze.", "I have a cat."),
    ("Wir gehen nach Hause.", "We are going home."),
    ("Die Sonne scheint heute sehr hell über der Stadt.", "The sun is shining very brightly over the town today."),
    ("Er liest ein Buch.", "He is reading a book."),
    ("Sie trinkt Wasser.", "She drinks water."),
    ("Das Wetter ist schön.", "The weather is nice."),
    ("Mein Bruder wohnt in Berlin.", "My brother lives in Berlin."),
    ("Kinder spielen im Garten.", "Children are playing in the garden."),
    ("Der Zug kommt spät.", "The train is late."),
    ("Ich verstehe dich nicht.", "I do not understand you."),
    ("Am Morgen trinke ich immer einen Kaffee mit Milch.", "In the morning I always drink a coffee with milk."),
    ("Ja.", "Yes."),
    ("Das Essen ist kalt.", "The food is cold."),
    ("Wo ist der Bahnhof?", "Where is the station?"),
    ("Heute ist Montag.", "Today is Monday."),
    ("Die Tür ist offen.", "The door is open."),
    ("Wir lernen Deutsch.", "We are learning German."),
    ("Der Lehrer spricht langsam.", "The teacher speaks slowly."),
    ("Das Auto ist rot.", "The car is red."),
    ("Ich bin müde.", "I am tired."),
    ("Er hat keine Zeit.", "He has no time."),
    ("Die Blumen blühen im Frühling.", "The flowers bloom in spring."),
    ("Danke schön.", "Thank you."),
    ("Meine Mutter kocht heute Abend Suppe für die ganze Familie.",
     "My mother is cooking soup for the whole family tonight."),
    ("Der Himmel ist blau.", "The sky is blue."),
    ("Sie singt ein Lied.", "She sings a song."),
    ("Wir warten auf den Bus.", "We are waiting for the bus."),
    ("Das ist gut.", "That is good."),
]
SOURCES = [de for de, _ in PAIRS]
REFERENCES = [en for _, en in PAIRS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tokenizer trained on PAIRS and a seeded tiny Marian model fitted to them, saved in one directory."""
    from transformers import MarianConfig, MarianMTModel

    directory = tmp_path_factory.mktemp("model")
    tok = train_tokenizer(SOURCES + REFERENCES, directory, vocab_size=120)
    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(
        vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
        scale_embedding=True))
    # a few full-batch steps: untrained, the decoder ignores the source and every input gets the same output
    batch = tok(SOURCES, text_target=REFERENCES, padding=True, return_tensors="pt")
    batch["labels"][batch["labels"] == tok.pad_token_id] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(model_dir):
    from transformers import MarianMTModel

    from nmtq.tokenizer import load_tokenizer

    return MarianMTModel.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)


def _greedy_by_hand(model, tokenizer, source: str, max_new_tokens: int) -> str:
    """Argmax decoding one token at a time, no cache; the last step is forced to </s> as Marian's config asks."""
    encoded = tokenizer([source], return_tensors="pt")
    decoded = [model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(max_new_tokens - 1):
            logits = model(**encoded, decoder_input_ids=torch.tensor([decoded])).logits[0, -1]
            decoded.append(int(logits.argmax()))
            if decoded[-1] == tokenizer.eos_token_id:
                break
    return tokenizer.decode(decoded, skip_special_tokens=True)


def test_translate_restores_input_order_after_sorting_by_length(tiny):
    model, tokenizer = tiny
    sources = SOURCES[:12]
    expected = []
    for source in sources:  # one at a time: no padding, no sorting
        output = model.generate(**tokenizer([source], return_tensors="pt"), num_beams=3, max_new_tokens=12)
        expected.append(tokenizer.decode(output[0], skip_special_tokens=True))
    assert len(set(expected)) > 3, "the model must translate sources differently for the order to be tested"
    assert translate(model, tokenizer, sources, num_beams=3, max_new_tokens=12, batch_size=5,
                     progress=False) == expected


def test_translate_with_one_beam_is_greedy_decoding(tiny):
    model, tokenizer = tiny
    sources = SOURCES[:8]
    expected = [_greedy_by_hand(model, tokenizer, source, max_new_tokens=10) for source in sources]
    assert translate(model, tokenizer, sources, num_beams=1, max_new_tokens=10, batch_size=3,
                     progress=False) == expected


def test_translate_leaves_the_training_mode_alone(tiny):
    model, tokenizer = tiny
    model.train()
    try:
        assert translate(model, tokenizer, [], progress=False) == []
        translate(model, tokenizer, SOURCES[:2], num_beams=1, max_new_tokens=4, progress=False)
        assert model.training
    finally:
        model.eval()


def test_perplexity_is_exp_of_the_token_weighted_mean_nll(tiny):
    model, tokenizer = tiny
    # lengths differ a lot, so weighting by sentence or by batch would give another number
    sources, references = SOURCES[:6], REFERENCES[:6]
    total_nll, total_tokens, sentence_means = 0.0, 0, []
    with torch.no_grad():
        for source, reference in zip(sources, references):
            encoded = tokenizer([source], text_target=[reference], return_tensors="pt")
            num_tokens = encoded["labels"].numel()  # </s> included, no padding in a batch of one
            mean_nll = model(**encoded).loss.item()
            total_nll += mean_nll * num_tokens
            total_tokens += num_tokens
            sentence_means.append(mean_nll)
    expected = math.exp(total_nll / total_tokens)
    result = perplexity(model, tokenizer, sources, references, batch_size=2, progress=False)
    assert result == pytest.approx(expected, rel=1e-5)
    assert result != pytest.approx(math.exp(sum(sentence_means) / len(sentence_means)), rel=1e-3)


def test_perplexity_rejects_mismatched_lengths(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="references has 1 lines but there are 2"):
        perplexity(model, tokenizer, SOURCES[:2], REFERENCES[:1], progress=False)


HYPOTHESES = ["The house is small.", "The dog sleeps.", "I have got a cat!", "We go home.", "the sun shines",
              "He reads the book.", "She drinks some water.", "Nice weather."]
SECOND_REFERENCES = ["The house is little.", "The dog sleeps.", "I own a cat.", "We go home.",
                     "The sun shines brightly over the town today.", "He reads a book.", "She drinks water.",
                     "The weather is fine."]


def _sacrebleu_cli(tmp_path, hypotheses, *reference_sets):
    """Scores and signatures as the sacrebleu command line prints them (JSON, 4 decimals)."""
    (tmp_path / "hyp.txt").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
    reference_files = []
    for k, references in enumerate(reference_sets):
        reference_files.append(str(tmp_path / f"ref{k}.txt"))
        (tmp_path / f"ref{k}.txt").write_text("\n".join(references) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "sacrebleu", *reference_files, "-i", str(tmp_path / "hyp.txt"),
               "-m", "bleu", "chrf", "-w", "4", "-f", "json"]
    bleu, chrf = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return bleu, chrf


@pytest.mark.parametrize("num_references", [1, 2])
def test_corpus_scores_match_the_sacrebleu_command_line(tmp_path, num_references):
    reference_sets = [REFERENCES[:8], SECOND_REFERENCES][:num_references]
    bleu, chrf = _sacrebleu_cli(tmp_path, HYPOTHESES, *reference_sets)
    scores = corpus_scores(HYPOTHESES, reference_sets if num_references > 1 else reference_sets[0])
    assert f"{scores['bleu']:.4f}" == f"{bleu['score']:.4f}"
    assert f"{scores['chrf']:.4f}" == f"{chrf['score']:.4f}"
    assert scores["bleu_signature"] == bleu["signature"]
    assert scores["chrf_signature"] == chrf["signature"]
    assert f"nrefs:{num_references}|" in scores["bleu_signature"]
    details = scores["bleu_details"]
    assert bleu["verbose_score"].startswith("/".join(f"{p:.1f}" for p in details["precisions"]))
    assert f"BP = {details['brevity_penalty']:.3f}" in bleu["verbose_score"]


def test_corpus_scores_of_a_perfect_translation():
    scores = corpus_scores(REFERENCES, REFERENCES)
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert scores["bleu_details"]["brevity_penalty"] == 1.0


@pytest.mark.parametrize("references, message", [
    (REFERENCES[:7], "reference set 0 has 7 lines but there are 8"),
    ([REFERENCES[:8], SECOND_REFERENCES[:5]], "reference set 1 has 5 lines but there are 8"),
])
def test_corpus_scores_reject_mismatched_lengths(references, message):
    with pytest.raises(ValueError, match=message):
        corpus_scores(HYPOTHESES, references)


def test_corpus_scores_reject_an_empty_corpus():
    with pytest.raises(ValueError, match="no sentences"):
        corpus_scores([], [])


def test_evaluate_model_writes_hypotheses_and_metrics(tiny, tmp_path):
    model, tokenizer = tiny
    sources, references = SOURCES[:10], REFERENCES[:10]
    output_dir = tmp_path / "eval"
    metrics = evaluate_model(model, tokenizer, sources, references, num_beams=2, max_new_tokens=8, batch_size=4,
                             output_dir=output_dir, progress=False)
    hypotheses = translate(model, tokenizer, sources, num_beams=2, max_new_tokens=8, progress=False)
    assert (output_dir / "hypotheses.txt").read_text(encoding="utf-8").split("\n") == [*hypotheses, ""]
    assert json.loads((output_dir / "metrics.json").read_text(encoding="utf-8")) == metrics
    assert sorted(p.name for p in output_dir.iterdir()) == ["hypotheses.txt", "metrics.json"]  # no temp files left
    assert metrics["num_sentences"] == 10 and metrics["num_beams"] == 2
    assert metrics["environment"]["torch"] == importlib.metadata.version("torch")  # what it was measured with
    assert metrics["bleu"] == corpus_scores(hypotheses, references)["bleu"]
    assert metrics["perplexity"] == pytest.approx(perplexity(model, tokenizer, sources, references, progress=False))
    tokens = sum(len(tokenizer(text_target=h)["input_ids"]) for h in hypotheses)
    assert metrics["tokens_per_second"] == pytest.approx(tokens / metrics["generation_seconds"])
    text = format_metrics(metrics)
    assert metrics["bleu_signature"] in text and metrics["chrf_signature"] in text and "sentences   10" in text


def test_evaluate_model_checks_lengths_before_writing(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="reference set 0 has 2 lines but there are 3"):
        evaluate_model(model, tokenizer, SOURCES[:3], REFERENCES[:2], output_dir=tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval").exists()


def test_evaluate_directory_rejects_a_missing_directory(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=f"{missing}.*does not exist"):
        evaluate_directory(missing, "bible")


def test_evaluate_directory_rejects_a_directory_without_weights(model_dir, tmp_path):
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no safetensors weights.*save_pretrained"):
        evaluate_directory(tmp_path, "bible")


def test_evaluate_directory_filters_by_length(model_dir, tmp_path, monkeypatch):
    from datasets import Dataset

    from nmtq.tokenizer import load_tokenizer

    calls = []

    def load_corpus(spec, split, source_lang, target_lang, max_words):
        calls.append((spec, split, source_lang, target_lang, max_words))
        return Dataset.from_dict({"source": SOURCES, "target": REFERENCES}), {"pairs": len(SOURCES)}

    # stand-ins for nmtq.data and nmtq.data_spec, so this test does not depend on the data modules
    monkeypatch.setitem(sys.modules, "nmtq.data", types.SimpleNamespace(load_corpus=load_corpus))
    monkeypatch.setitem(sys.modules, "nmtq.data_spec", types.SimpleNamespace(check_data_spec=lambda spec: None))
    tokenizer = load_tokenizer(model_dir)
    max_length = 8
    expected_kept = sum(len(tokenizer(de, add_special_tokens=False)["input_ids"]) <= max_length
                        and len(tokenizer(text_target=en, add_special_tokens=False)["input_ids"]) <= max_length
                        for de, en in PAIRS)
    assert 0 < expected_kept < len(PAIRS)
    metrics = evaluate_directory(model_dir, "toy", split="dev", max_length=max_length, num_beams=1,
                                 max_new_tokens=6, output_dir=tmp_path / "eval", device="cpu", progress=False)
    assert calls == [("toy", "dev", "de", "en", None)]
    assert metrics["data"]["num_pairs"] == len(PAIRS) and metrics["data"]["num_kept"] == expected_kept
    assert metrics["num_sentences"] == expected_kept
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["data"]["cleaning"] == {"pairs": len(PAIRS)}
