"""MkDocs hook: the home page is the README, with its links rewritten for the site.

``docs/index.md`` holds the marker ``<!-- README -->``; this hook puts the README there, so the overview
is written once. Links into ``docs/`` lose that prefix (the site's pages sit at its root) and links to a
tutorial's source (``tutorials/NN_name.py``) point at its executed page, and ``tutorials/`` at the
tutorials' overview.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MARKER = "<!-- README -->"
REPO = Path(__file__).resolve().parents[2]


def readme_for_site() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)
    text = re.sub(r"\]\(tutorials/(\d\d_\w+)\.py\)", r"](tutorials/\1.ipynb)", text)
    return text.replace("](tutorials/)", "](tutorials.md)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, readme_for_site())
    return markdown
