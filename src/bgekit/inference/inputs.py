"""Validating and formatting user inputs: texts, corpus items, instructions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bgekit.errors import InputError


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
