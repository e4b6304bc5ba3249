"""Griffe extension for the API reference: bgekit's docstring habits, rendered as Google-style sections.

* ``Example:`` (singular, bgekit's habit) becomes ``Examples:``, so doctest lines render as code rather than
  as Markdown (where ``q["vecs"][0]`` would read as a link).
* An argument line that lists several names and wraps before the colon is joined into one line.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

WRAPPED_NAMES = re.compile(r"^(\s+[\w, ]+,)\n\s+(?=[\w, ]+:)", re.MULTILINE)


def rewrite(text: str) -> str:
    text = re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", text, flags=re.MULTILINE)
    return WRAPPED_NAMES.sub(r"\1 ", text)


class BgekitDocstrings(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
