"""The real-data study's splits (benchmarks/studies/sentiment.py), built from a stand-in of the vaderSentiment
sdist: VADER's corpora by name, disjoint seeded splits, and a folder holding other splits refused instead of
reused."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest

from benchmarks.studies.sentiment import _INNER, CORPORA, SDIST, write_splits


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _fake_sdist(cache: Path) -> None:
    """The sdist's layout: an outer tar.gz holding the study's tar.gz, one rated file per corpus (id, mean, text)."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for corpus, member in CORPORA.items():
            lines = [f"{i}\t{(-1) ** i * (0.2 + i % 5)}\t{corpus} snippet {i}" for i in range(60)]
            _add(t, f"hutto_ICWSM_2014/{member}", "\n".join(lines).encode())
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(cache / SDIST, "w:gz") as outer:
        _add(outer, _INNER, inner.getvalue())


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_each_corpus_gives_disjoint_seeded_splits_and_other_splits_are_refused(tmp_path):
    _fake_sdist(cache := tmp_path / "cache")
    files = write_splits(tmp_path / "tweets", cache, (20, 10, 10), corpus="tweets")
    rows = {name: _rows(path) for name, path in files.items()}
    assert [len(rows[n]) for n in ("train", "val", "test")] == [20, 10, 10]
    texts = [r["text"] for split in rows.values() for r in split]
    assert len(set(texts)) == 40 and all(t.startswith("tweets snippet") for t in texts)
    # every 5th snippet is rated +-0.2 (near neutral, left out); the sign of the mean rating is the label
    for r in (r for split in rows.values() for r in split):
        i = int(r["text"].split()[-1])
        assert i % 5 != 0 and r["label"] == ("positive" if i % 2 == 0 else "negative")
    assert json.loads((tmp_path / "tweets" / "splits.json").read_text())["corpus"] == "tweets"
    again = write_splits(tmp_path / "tweets", cache, (20, 10, 10), corpus="tweets")  # written once, read back
    assert again == files and {n: _rows(p) for n, p in again.items()} == rows
    with pytest.raises(SystemExit, match="holds other splits \\(corpus tweets\\); give another folder"):
        write_splits(tmp_path / "tweets", cache, (20, 10, 10), corpus="amazon")
    with pytest.raises(SystemExit, match="50 nyt snippets asked for, 48 available"):
        write_splits(tmp_path / "nyt", cache, (30, 10, 10), corpus="nyt")
    with pytest.raises(SystemExit, match="corpus 'imdb' is not one of movies, tweets, amazon, nyt"):
        write_splits(tmp_path / "x", cache, corpus="imdb")
