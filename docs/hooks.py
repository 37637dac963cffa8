"""MkDocs hook: the committed benchmark outputs (``bench/results``) become part of the
site under ``results/``, so pages show the figures and tables the benchmarks wrote rather
than copies typed by hand, and ``mkdocs build --strict`` fails when one goes missing."""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

BENCH = Path(__file__).resolve().parent.parent / "bench"
KINDS = (".png", ".md", ".json", ".txt")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in sorted((BENCH / "results").rglob("*")):
        if path.is_file() and path.suffix in KINDS:
            files.append(File(str(path.relative_to(BENCH)), src_dir=str(BENCH),
                              dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files
