"""Turning (query, passage) pairs into token ids exactly as FlagEmbedding's rerankers do, in bulk.

FlagEmbedding tokenizes queries and passages in batches, then joins every pair in Python through
``tokenizer.prepare_for_model`` (special tokens, ``only_second`` truncation), which dominates its run time
on small models. Here the distinct queries and passages go through the fast tokenizer's batch call once
(``tokenize_texts``; a query repeated for 100 candidates is tokenized once) and each pair is joined by
list concatenation with the special-token template read once from the tokenizer, giving the same ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bgekit.engine import tokenize_texts
from bgekit.errors import ConfigError, InputError
from bgekit.inference.inputs import check_unicode, corpus_item_text

Feature = dict[str, list[int]]


def as_pair_list(pairs: Any, what: str = "pairs") -> tuple[list[tuple[str, str]], bool]:
    """Validate pairs; return them as a list of ``(query, passage)`` and whether one pair was given.

    A single pair may be given as a 2-tuple (or 2-list) of strings. Passages may be BEIR-style
    ``{"title", "text"}`` dicts, joined as BEIR/MTEB do.

    Example:
        >>> as_pair_list(("q", "p"))
        ([('q', 'p')], True)
        >>> as_pair_list([("q", {"title": "T", "text": "p"})])
        ([('q', 'T p')], False)
    """
    if isinstance(pairs, str | bytes | Mapping) or not isinstance(pairs, Sequence):
        raise InputError(f"{what} must be a list of (query, passage) pairs, got {type(pairs).__name__}")
    if len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        return [(check_unicode(pairs[0], f"{what}[0]"), check_unicode(pairs[1], f"{what}[1]"))], True
    out: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str | bytes | Mapping) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InputError(
                f"{what}[{i}] is {pair!r:.80} ({type(pair).__name__}); expected a (query, passage) pair of strings"
            )
        query, passage = pair[0], pair[1]
        if not isinstance(query, str):
            raise InputError(f"{what}[{i}][0] (the query) is {type(query).__name__}; expected a string")
        if not isinstance(passage, str):
            if isinstance(passage, Mapping):
                passage = corpus_item_text(passage, i, f"{what}[{i}][1]")
            else:
                raise InputError(
                    f"{what}[{i}][1] (the passage) is {type(passage).__name__}; expected a string"
                )
        check_unicode(query, f"{what}[{i}][0]")
        check_unicode(passage, f"{what}[{i}][1]")
        out.append((query, passage))
    return out, False


@dataclass
class PairTemplate:
    """Where a tokenizer puts its special tokens around a pair, and the token type of each part."""

    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    types: tuple[int, int, int, int, int] | None
    """Token type of prefix, query, middle, passage, suffix; ``None`` when the model takes none."""

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def build(self, query: list[int], passage: list[int]) -> Feature:
        ids = self.prefix + query + self.middle + passage + self.suffix
        if self.types is None:
            return {"input_ids": ids}
        t = self.types
        types = (
            [t[0]] * len(self.prefix)
            + [t[1]] * len(query)
            + [t[2]] * len(self.middle)
            + [t[3]] * len(passage)
            + [t[4]] * len(self.suffix)
        )
        return {"input_ids": ids, "token_type_ids": types}


def _reference_pair(tokenizer: Any, query: list[int], passage: list[int], max_length: int | None) -> Feature:
    out = tokenizer.prepare_for_model(
        list(query),
        list(passage),
        truncation="only_second" if max_length else False,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    feature = {"input_ids": list(out["input_ids"])}
    if "token_type_ids" in out:
        feature["token_type_ids"] = list(out["token_type_ids"])
    return feature


def read_pair_template(tokenizer: Any) -> PairTemplate | None:
    """Read the special-token template of ``tokenizer`` for pairs, or ``None`` if it is not a fixed one.

    Probes ``prepare_for_model`` with marker ids and checks the template reproduces it on a second probe.
    """
    special = set(tokenizer.all_special_ids)
    vocab = len(tokenizer)
    markers = [i for i in range(vocab // 2, vocab) if i not in special][:5]
    if len(markers) < 5:
        return None
    qa, qb, pa, pb, pc = markers
    probe = _reference_pair(tokenizer, [qa, qb], [pa, pb, pc], None)
    ids = probe["input_ids"]
    try:
        i = next(k for k in range(len(ids) - 1) if ids[k] == qa and ids[k + 1] == qb)
        j = next(k for k in range(i + 2, len(ids) - 2) if ids[k : k + 3] == [pa, pb, pc])
    except StopIteration:
        return None
    types: tuple[int, int, int, int, int] | None = None
    if "token_type_ids" in probe:
        tt = probe["token_type_ids"]
        types = (
            tt[0] if i else 0,
            tt[i],
            tt[i + 2] if j > i + 2 else 0,
            tt[j],
            tt[-1] if j + 3 < len(ids) else 0,
        )
    template = PairTemplate(ids[:i], ids[i + 2 : j], ids[j + 3 :], types)
    for query, passage in (([qa], [pa]), ([qb, qa, qb], [pc])):
        if template.build(query, passage) != _reference_pair(tokenizer, query, passage, None):
            return None
    return template


def tokenize_unique(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids (no special tokens, truncated to ``max_length``) of each text, each distinct text once.

    A rerank workload repeats each query for every candidate passage; tokenizing it once saves that work.
    The returned lists may be shared between equal texts: callers must not modify them.
    """
    index: dict[str, int] = {}
    unique: list[str] = []
    for text in texts:
        if text not in index:
            index[text] = len(unique)
            unique.append(text)
    features = tokenize_texts(tokenizer, unique, max_length, add_special_tokens=False)
    return [features[index[text]]["input_ids"] for text in texts]


def truncate_second(first_len: int, second: list[int], max_length: int, side: str) -> list[int]:
    """``only_second`` truncation as ``prepare_for_model`` does it: cut the passage so the pair fits."""
    to_remove = first_len + len(second) - max_length
    if to_remove <= 0 or len(second) <= to_remove:
        # a query too long to fit is left as is, as transformers does; settings validation prevents it
        return second
    return second[to_remove:] if side == "left" else second[:-to_remove]


class CrossEncoderInputs:
    """``[CLS] query [SEP] passage [SEP]`` (or the tokenizer's own template), as FlagReranker builds it.

    The query is truncated to ``query_max_length`` tokens, the passage to what is left of ``max_length``.

    Example:
        >>> inputs = CrossEncoderInputs(tokenizer)                              # doctest: +SKIP
        >>> inputs.features([("what is a panda?", "A bear.")], 512, 384)       # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.template = read_pair_template(tokenizer)
        self.n_special = (
            self.template.n_special
            if self.template is not None
            else tokenizer.num_special_tokens_to_add(pair=True)
        )

    def check_lengths(self, max_length: int, query_max_length: int) -> None:
        if query_max_length + self.n_special >= max_length:
            raise ConfigError(
                f"query_max_length={query_max_length} leaves no room for the passage in max_length={max_length} "
                f"({self.n_special} special tokens); use query_max_length < {max_length - self.n_special}"
            )

    def features(
        self, pairs: Sequence[tuple[str, str]], max_length: int, query_max_length: int
    ) -> list[Feature]:
        self.check_lengths(max_length, query_max_length)
        queries = tokenize_unique(self.tokenizer, [q for q, _ in pairs], query_max_length)
        passages = tokenize_unique(self.tokenizer, [p for _, p in pairs], max_length)
        side = getattr(self.tokenizer, "truncation_side", "right")
        out: list[Feature] = []
        template = self.template
        for q_ids, p_ids in zip(queries, passages, strict=True):
            if template is None:
                out.append(_reference_pair(self.tokenizer, q_ids, p_ids, max_length))
            else:
                p_ids = truncate_second(len(q_ids) + template.n_special, p_ids, max_length, side)
                out.append(template.build(q_ids, p_ids))
        return out


class PromptInputs:
    """``<bos>A: {query}\\nB: {passage}\\n{prompt}`` as FlagEmbedding's LLM rerankers build it.

    The query (with its ``"A: "`` instruction) is truncated to ``query_max_length`` tokens; ``"\\n"`` plus
    the passage is cut so that the pair fits ``max_length + len("\\n") + len(prompt)`` tokens; ``"\\n"`` and
    the prompt follow. ``<bos>`` leads when the tokenizer has one distinct from its pad token (always, for
    the layer-wise and lightweight classes, as FlagEmbedding).
    """

    def __init__(self, tokenizer: Any, *, always_bos: bool, original_pad_id: int | None) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token_id
        if always_bos:
            self.bos = [bos] if bos is not None else []
        else:
            self.bos = [bos] if bos is not None and bos != original_pad_id else []
        self.sep = tokenizer("\n", add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def check_lengths(self, max_length: int, query_max_length: int) -> None:
        if query_max_length >= max_length:
            raise ConfigError(
                f"query_max_length={query_max_length} leaves no room for the passage in max_length={max_length}; "
                f"use query_max_length < {max_length}"
            )

    def features(
        self, pairs: Sequence[tuple[str, str]], max_length: int, query_max_length: int, prompt: str
    ) -> tuple[list[Feature], list[int], int]:
        """Token ids of each pair, the length of each ``<bos> query \\n`` part, and the prompt part's length."""
        self.check_lengths(max_length, query_max_length)
        queries = tokenize_unique(self.tokenizer, [q for q, _ in pairs], query_max_length)
        passages = tokenize_unique(self.tokenizer, [p for _, p in pairs], max_length)
        prompt_ids = self.prompt_ids(prompt)
        tail = self.sep + prompt_ids
        encode_max_length = max_length + len(self.sep) + len(prompt_ids)
        side = getattr(self.tokenizer, "truncation_side", "right")
        out: list[Feature] = []
        query_lengths: list[int] = []
        for q_ids, p_ids in zip(queries, passages, strict=True):
            first = self.bos + q_ids
            second = truncate_second(len(first), self.sep + p_ids, encode_max_length, side)
            out.append({"input_ids": first + second + tail})
            query_lengths.append(len(first) + len(self.sep))
        return out, query_lengths, len(tail)
