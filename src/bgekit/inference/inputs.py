"""Validating and formatting user inputs: texts, corpus items, instructions, ICL few-shot prompts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bgekit.errors import ConfigError, InputError

ICL_SUFFIX = "\n<response>"
"""What FlagICLModel puts after each query."""
ICL_EXAMPLE_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"
"""How FlagICLModel writes one few-shot example (instruction, query, response)."""


def check_unicode(text: str, where: str) -> str:
    """``text`` if it is valid Unicode; a lone surrogate (e.g. ``"a\\ud800b"``, from text decoded with
    ``surrogateescape`` or cut through a surrogate pair) is an InputError naming ``where`` and the character.

    Example:
        >>> check_unicode("héllo", "texts[0]")
        'héllo'
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{where} is not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start}; "
            "fix the text's decoding, or replace such characters first "
            "(text.encode('utf-8', 'replace').decode('utf-8'))"
        ) from None
    return text


def as_text_list(texts: Any, what: str = "texts") -> tuple[list[str], bool]:
    """Validate a string or a sequence of strings; return the list and whether one string was given.

    Example:
        >>> as_text_list("hi")
        (['hi'], True)
    """
    if isinstance(texts, str):
        return [check_unicode(texts, what)], True
    if not isinstance(texts, Sequence) or isinstance(texts, bytes | Mapping):
        raise InputError(f"{what} must be a string or a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InputError(f"{what}[{i}] is {text!r:.60} ({type(text).__name__}); expected a string")
        check_unicode(text, f"{what}[{i}]")
    return out, False


def corpus_item_text(item: Any, index: int, what: str = "corpus") -> str:
    """A corpus item as one string: plain strings as they are, ``{"title", "text"}`` joined as BEIR/MTEB.

    BEIR and MTEB join as ``f"{title} {text}".strip()`` when a title is present.

    Example:
        >>> corpus_item_text({"title": "Pandas", "text": "Bears."}, 0)
        'Pandas Bears.'
    """
    if isinstance(item, str):
        return check_unicode(item, f"{what}[{index}]")
    if isinstance(item, Mapping):
        if "text" not in item or not isinstance(item["text"], str):
            raise InputError(
                f"{what}[{index}] is a dict without a string 'text' field (keys: {sorted(map(str, item))})"
            )
        title = item.get("title")
        if title is not None and not isinstance(title, str):
            raise InputError(f"{what}[{index}]['title'] is {type(title).__name__}; expected a string")
        check_unicode(item["text"], f"{what}[{index}]['text']")
        if title:
            check_unicode(title, f"{what}[{index}]['title']")
        return f"{title} {item['text']}".strip() if title else item["text"]
    raise InputError(f"{what}[{index}] is {item!r:.60} ({type(item).__name__}); expected a string or a dict")


def as_corpus_list(corpus: Any, what: str = "corpus") -> tuple[list[str], bool]:
    """Validate corpus items (strings or title/text dicts); return texts and whether one item was given."""
    if isinstance(corpus, str | Mapping):
        return [corpus_item_text(corpus, 0, what)], True
    if not isinstance(corpus, Sequence) or isinstance(corpus, bytes):
        raise InputError(f"{what} must be a list of strings or title/text dicts, got {type(corpus).__name__}")
    return [corpus_item_text(item, i, what) for i, item in enumerate(corpus)], False


def apply_instruction(texts: list[str], instruction: str | None, fmt: str) -> list[str]:
    """Put ``instruction`` before each text with ``fmt`` (``"{}{}"`` joins them directly)."""
    if not instruction:
        return texts
    return [fmt.format(instruction, text) for text in texts]


def icl_prefix(
    examples: Sequence[Mapping[str, str]] | None, default_instruct: str, example_format: str
) -> str:
    """The few-shot prefix put before each ICL query: the examples joined by blank lines.

    Example:
        >>> icl_prefix([{"query": "q", "response": "r"}], "Find it.", ICL_EXAMPLE_FORMAT)
        '<instruct>Find it.\\n<query>q\\n<response>r\\n\\n'
    """
    if not examples:
        return ""
    parts = [
        example_format.format(
            example.get("instruct", default_instruct), example.get("query", ""), example.get("response", "")
        )
        for example in examples
    ]
    return "\n\n".join(parts) + "\n\n"


def icl_queries(
    tokenizer: Any, texts: list[str], max_length: int, prefix: str, suffix: str, *, appended_eos: bool
) -> tuple[list[str], int]:
    """``prefix + query + suffix`` strings and the length limit for them, as ``FlagICLModel`` builds.

    The query alone is truncated so that it, the suffix and the special tokens the tokenizer adds (and
    the EOS appended when ``appended_eos``) fit in ``max_length``; the examples come on top. FlagEmbedding
    counts ``<s>``/``</s>`` here whatever the tokenizer's own special tokens are.
    """
    if not texts:
        return texts, max_length
    prefix_len = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    suffix_len = len(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    reserved = tokenizer.num_special_tokens_to_add(pair=False) + suffix_len + appended_eos
    budget = max_length - reserved
    if budget < 1:
        raise ConfigError(
            f"query max_length={max_length} leaves no room for the query once the ICL suffix "
            f"({suffix_len} tokens) and special tokens ({reserved - suffix_len}) are counted"
        )
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]
    bodies = tokenizer.batch_decode(ids)
    limit = (prefix_len + suffix_len + max_length + 8) // 8 * 8 + 8
    return [prefix + body + suffix for body in bodies], limit


def eos_to_append(tokenizer: Any) -> int | None:
    """The EOS id to append to every text for ``append_eos=True`` (``None`` when the tokenizer already
    ends texts with it), or ConfigError when the tokenizer has no EOS token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("append_eos=True but the tokenizer has no eos_token; set one or turn it off")
    probe = tokenizer("a")["input_ids"]
    return None if probe and probe[-1] == eos else int(eos)


def tokenize_appending(
    tokenizer: Any, texts: list[str], max_length: int, *, truncate: bool, eos: int | None
) -> list[dict[str, list[int]]]:
    """Token ids of ``texts`` (one unpadded feature dict each), with ``eos`` appended when given: the
    text is then cut one token shorter so the EOS still fits in ``max_length``."""
    from bgekit.engine import tokenize_texts

    if eos is None:
        return tokenize_texts(tokenizer, texts, max_length, truncation=truncate)
    if max_length < 2:
        raise ConfigError(f"max_length={max_length} leaves no room for the text and the appended EOS")
    features = tokenize_texts(tokenizer, texts, max_length - 1, truncation=truncate)
    for feature in features:
        feature["input_ids"] = [*feature["input_ids"], eos]
        if "token_type_ids" in feature:
            feature["token_type_ids"] = [*feature["token_type_ids"], 0]
    return features
