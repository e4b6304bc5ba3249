"""Execute the tutorials as notebooks and write them, outputs and plots included, for the documentation site.

Each ``tutorials/NN_*.py`` (jupytext percent format) is read with jupytext, run top to bottom in a fresh
Python kernel with nbclient (working folder: ``tutorials/``), and written as ``docs/tutorials/NN_*.ipynb``.
A notebook already there is kept when it was executed from the same sources (the tutorial, ``common.py``
and every module of ``src/bgekit``): the tests execute the tutorials and ``make docs`` then renders what
they produced instead of running them a second time. ``--force`` executes regardless.

Usage:
    python tutorials/execute.py                 # every tutorial, skipping the up-to-date ones
    python tutorials/execute.py 03 05 --force   # tutorials whose file name starts with 03 or 05
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOKS = REPO / "docs" / "tutorials"
CELL_TIMEOUT_S = 1800


def tutorials(prefixes: list[str] | None = None) -> list[Path]:
    """The tutorial sources, in order; with ``prefixes``, those whose name starts with one of them."""
    found = sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))
    if prefixes:
        found = [p for p in found if any(p.name.startswith(x) for x in prefixes)]
    return found


def source_key(tutorial: Path) -> str:
    """A hash of everything that decides a tutorial's outputs: its source, common.py and bgekit's code."""
    digest = hashlib.sha256()
    for path in [tutorial, HERE / "common.py", *sorted((REPO / "src" / "bgekit").rglob("*.py"))]:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def notebook_path(tutorial: Path) -> Path:
    return NOTEBOOKS / (tutorial.stem + ".ipynb")


def up_to_date(tutorial: Path) -> bool:
    import nbformat

    path = notebook_path(tutorial)
    if not path.is_file():
        return False
    stored = nbformat.read(path, as_version=4).metadata.get("bgekit", {})
    return bool(stored.get("source_key") == source_key(tutorial))


def execute(tutorial: Path) -> float:
    """Run one tutorial as a notebook and write it executed; returns the seconds it took.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the message shows the cell and traceback).
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(tutorial)
    start = time.perf_counter()
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(HERE)}},
    )
    client.execute()
    seconds = time.perf_counter() - start
    notebook.metadata["bgekit"] = {"source_key": source_key(tutorial), "seconds": round(seconds, 1)}
    NOTEBOOKS.mkdir(parents=True, exist_ok=True)
    staged = notebook_path(tutorial).with_suffix(".ipynb.partial")
    nbformat.write(notebook, staged)
    staged.replace(notebook_path(tutorial))
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "prefixes", nargs="*", help="run only tutorials whose file name starts with one of these"
    )
    parser.add_argument("--force", action="store_true", help="execute even when the notebook is up to date")
    args = parser.parse_args(argv)
    chosen = tutorials(args.prefixes)
    if not chosen:
        parser.error(f"no tutorial matches {args.prefixes} in {HERE}")
    for tutorial in chosen:
        if not args.force and up_to_date(tutorial):
            print(f"{tutorial.name}: up to date ({notebook_path(tutorial).relative_to(REPO)})", flush=True)
            continue
        print(f"{tutorial.name}: executing ...", flush=True)
        seconds = execute(tutorial)
        print(f"{tutorial.name}: {seconds:.1f} s -> {notebook_path(tutorial).relative_to(REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
