"""Every tutorial executed top to bottom as a notebook, on the real model and data; any error fails.

Each tutorial asserts the figures it teaches (by-hand metrics against pytrec_eval, SciFact's nDCG@10
against the evaluation module, recall of approximate indexes, the fine-tuning gain), so a tutorial whose
numbers change fails here. The executed notebooks land in ``docs/tutorials/`` where the site build
(``tests/tutorials/test_tutorials_site.py``, ``make docs``) renders them without running them again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9][0-9]_*.py"))
DATA = Path(os.environ.get("BGEKIT_DATA", REPO / ".." / "shared" / "data")).resolve()


def test_every_step_has_a_tutorial() -> None:
    assert [t.name[:2] for t in TUTORIALS] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.slow
@pytest.mark.parametrize("tutorial", TUTORIALS, ids=[t.stem for t in TUTORIALS])
def test_tutorial_runs(tutorial: Path) -> None:
    if not (DATA / "scifact").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "tutorials" / "execute.py"), tutorial.name[:2], "--force"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, (
        f"{tutorial.name} failed after {seconds:.0f} s:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    assert (REPO / "docs" / "tutorials" / f"{tutorial.stem}.ipynb").is_file()
    print(f"{tutorial.name}: {seconds:.1f} s")
