"""Each pretrained family's translation conventions: language codes on the tokenizer, a forced target-language
token in generation, and T5's task prefix on every source.

- NLLB (``deu_Latn``/``eng_Latn``), mBART-50 (``de_DE``/``en_XX``) and M2M100 (``de``/``en``) tokenizers put the
  source code before each source and the target code before each label; ``generate`` must force the target code
  as the first token (``forced_bos_token_id``), or it translates into whatever language it likes.
- T5 reads a task prefix ("translate German to English: ") before every source.
- Marian (OPUS-MT), BART and FSMT take neither.

:func:`resolve_conventions` reads what a model and its tokenizer need, defaults the codes from the data's
languages (``de`` is ``de`` for M2M100, ``de_DE`` for mBART-50 and ``deu_Latn`` for NLLB) and the prefix from the
model's ``task_specific_params``, and refuses, in one line, codes or a prefix that the family does not take.
:func:`apply_conventions` puts them on the tokenizer and the models; the prefix is kept in the model's
``task_specific_params`` under ``translation_{src}_to_{tgt}``, where T5 checkpoints keep theirs, so that a saved
student is evaluated with it.

Example:
    >>> from transformers import T5Config
    >>> config = T5Config(task_specific_params={"translation_de_to_en": {"prefix": "translate German to English: "}})
    >>> resolve_conventions(None, config, None, "de", "en").prefix
    'translate German to English: '
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import NmtqError

PREFIX_FAMILIES = ("t5", "mt5")  # model types that read a task prefix
# ISO 639-1 to NLLB's ISO 639-3 for the languages of nmtq's data (the Bible's) and of WMT; others are passed as codes
ISO_639_3 = {"cs": "ces", "de": "deu", "en": "eng", "es": "spa", "et": "est", "fi": "fin", "fr": "fra", "gu": "guj",
             "hi": "hin", "it": "ita", "ja": "jpn", "kk": "kaz", "lt": "lit", "lv": "lvs", "nl": "nld", "pl": "pol",
             "pt": "por", "ro": "ron", "ru": "rus", "tr": "tur", "uk": "ukr", "zh": "zho"}
_NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")


@dataclass(frozen=True)
class Conventions:
    """What a model and its tokenizer need around each pair: codes (None for families without them), the
    target code's token id to force first in generation (None if none), and the text put before each source."""

    source_code: str | None = None
    target_code: str | None = None
    forced_bos_token_id: int | None = None
    prefix: str = ""
    prefix_key: str | None = None  # the task_specific_params entry that holds the prefix

    def prefixed(self, sources: list[str]) -> list[str]:
        """``sources`` with the prefix put before each."""
        return [self.prefix + source for source in sources] if self.prefix else list(sources)


def takes_language_codes(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` marks languages with code tokens (NLLB, mBART-50, M2M100); FSMT's ``src_lang`` names
    the Moses rules it applies, with no code token."""
    return tokenizer is not None and hasattr(tokenizer, "src_lang") and bool(language_codes(tokenizer))


def language_codes(tokenizer: Any) -> list[str]:
    """The language codes ``tokenizer`` knows, as ``src_lang`` takes them."""
    codes = getattr(tokenizer, "lang_code_to_id", None)
    if codes:
        return list(codes)
    return sorted(token for token in tokenizer.get_added_vocab() if _NLLB_CODE.match(token))


def code_id(tokenizer: Any, code: str) -> int:
    """The token id of language ``code`` (M2M100's ``de`` is the token ``__de__``)."""
    by_code = getattr(tokenizer, "lang_code_to_id", None)
    if by_code:
        return by_code[code]
    return tokenizer.convert_tokens_to_ids(code)


def prefix_key(source_lang: str, target_lang: str) -> str:
    """The ``task_specific_params`` entry of a pair, as T5 checkpoints name it: ``translation_de_to_en``."""
    return f"translation_{source_lang}_to_{target_lang}"


def _default_code(tokenizer: Any, codes: list[str], lang: str, which: str) -> str:
    matches = [code for code in codes if code == lang] or \
        [code for code in codes if code.startswith(f"{lang}_") or code.startswith(f"{ISO_639_3.get(lang, '?')}_")]
    if len(matches) != 1:
        found = f"it has {', '.join(matches)}" if matches else "it has none"
        raise NmtqError(f"pass --{which}_lang_code: the {type(tokenizer).__name__} needs a language code for "
                         f"{which}_lang={lang!r}, and {found} (codes look like {', '.join(codes[:3])}, ...)")
    return matches[0]


def resolve_conventions(tokenizer: Any, config: Any, generation_config: Any, source_lang: str, target_lang: str,
                        source_code: str | None = None, target_code: str | None = None,
                        prefix: str | None = None) -> Conventions:
    """The conventions of a model (``config``, ``generation_config``) and its tokenizer for ``source_lang`` to
    ``target_lang``; explicit ``source_code``, ``target_code`` and ``prefix`` override the defaults.

    Raises a one-line ``ValueError`` for codes given to a tokenizer without them, a code the tokenizer does not
    know, a language with no unique default code, and a prefix given to a family that reads none.
    """
    model_type = getattr(config, "model_type", None)
    key = prefix_key(source_lang, target_lang)
    if prefix and model_type not in PREFIX_FAMILIES:
        raise NmtqError(f"--source_prefix {prefix!r}: a {model_type} model reads no task prefix (only "
                         f"{', '.join(PREFIX_FAMILIES)} do); leave it out")
    if prefix is None:
        params = getattr(config, "task_specific_params", None) or {}
        prefix = (params.get(key) or {}).get("prefix", "") if model_type in PREFIX_FAMILIES else ""
    if not takes_language_codes(tokenizer):
        given = [name for name, value in (("source", source_code), ("target", target_code)) if value]
        if given:
            raise NmtqError(f"--{given[0]}_lang_code: a {type(tokenizer).__name__} takes no language codes "
                             f"({model_type} marks no languages); leave it out")
        return Conventions(prefix=prefix, prefix_key=key)
    codes = language_codes(tokenizer)
    source_code = source_code or _default_code(tokenizer, codes, source_lang, "source")
    target_code = target_code or _default_code(tokenizer, codes, target_lang, "target")
    for which, code in (("source", source_code), ("target", target_code)):
        if code not in codes:
            raise NmtqError(f"--{which}_lang_code {code!r} is not a language code of this "
                             f"{type(tokenizer).__name__} (it has {', '.join(codes[:3])}, ...)")
    return Conventions(source_code, target_code, code_id(tokenizer, target_code), prefix, key)


def apply_conventions(conventions: Conventions, tokenizer: Any, *models: Any) -> None:
    """Set the codes on ``tokenizer`` (so that sources and labels carry them, and a saved tokenizer keeps them),
    force the target code first in each model's generation, and keep the prefix in each model's config."""
    if conventions.source_code is not None:
        tokenizer.src_lang, tokenizer.tgt_lang = conventions.source_code, conventions.target_code
    for model in models:
        if conventions.forced_bos_token_id is not None:
            model.generation_config.forced_bos_token_id = conventions.forced_bos_token_id
        if conventions.prefix:
            params = dict(getattr(model.config, "task_specific_params", None) or {})
            params[conventions.prefix_key] = {**params.get(conventions.prefix_key, {}), "prefix": conventions.prefix}
            model.config.task_specific_params = params
