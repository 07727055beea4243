"""Items added from their titles, searched by those titles: does text search find them?

    python -m bench.text_search var/demo/repository var/demo/data/items.csv
    python -m bench.text_search OUT/repository LOG/movies.csv

For a random sample of the catalogue's titled items it adds a *new* item under the same title, as
`freshrec items add` does (its row the projected title, rescaled like trained rows:
model_repository.projection.rows_from_text), all in one version written beside the served one,
then asks the served scoring path (model_repository.serving.Retriever, the code `retrieve` runs)
a pure text query (QUERY_TEXT, no user) for each title, and for the title reworded (lower case,
no year in brackets, no article, words in reverse order), and counts how often the new item is
in the top K and first. The new items compete with their trained twins of the same title and
with each other, as a batch added with `items add` would. Run it under another checkout's
serving code (PYTHONPATH=that checkout) to compare rules on the same repository.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from exporter.data import read_items
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository import versions
from model_repository.projection import TextProjection, rows_from_text
from model_repository.serving import Query, Retriever
from model_repository.text_encoding import TextEncoderRuntime

DEFAULT_SAMPLE = 200
NEW_ID_BASE = 10**12  # new items' ids: far above any log's
ARTICLES = {"a", "an", "the"}


def reword(title: str) -> str:
    """A search-box rewording: lower case, no "(1995)"-style year, no article, words reversed."""
    text = re.sub(r"\(\d{4}\)", " ", title.lower())
    words = [w for w in re.findall(r"[\w']+", text) if w not in ARTICLES]
    return " ".join(reversed(words)) or title


def grown_version(repository: Path, scratch: Path, titles: list[str],
                  encoder: TextEncoderRuntime) -> tuple[Path, np.ndarray]:
    """A copy of the served retrieve version with one new item per title appended (rows from the
    titles, no events). Returns (the new version's folder, the new items' ids)."""
    model_dir = repository / c.RETRIEVE
    served = versions.latest_version(model_dir)
    manifest, tables = versions.load_tables(model_dir / str(served))
    tables = {name: np.asarray(t) for name, t in tables.items()}
    projection = TextProjection.from_tables(tables)
    if projection is None:
        raise SystemExit(f"{model_dir / str(served)} was built without the text encoder")
    rows = rows_from_text(projection, encoder.encode(titles), tables[schema.ITEM_ROWS],
                          tables[schema.ITEM_POPULARITY])
    new_ids = NEW_ID_BASE + np.arange(len(titles), dtype=np.int64)
    for name in schema.ITEM_TABLES:
        if name in tables:
            fill = np.full((len(titles), *tables[name].shape[1:]), schema.EMPTY_ROW_FILL[name],
                           tables[name].dtype)
            tables[name] = np.concatenate([tables[name], fill])
    tables[schema.ITEM_IDS][-len(titles):] = new_ids
    tables[schema.ITEM_ROWS][-len(titles):] = rows
    shutil.copytree(model_dir, scratch / c.RETRIEVE, ignore=shutil.ignore_patterns("[0-9]*"))
    folder = versions.write_version(scratch / c.RETRIEVE, served + 1, tables,
                                    meta=dict(manifest.meta))
    return folder, new_ids


def ranks(retriever: Retriever, encoder: TextEncoderRuntime, texts: list[str],
          targets: np.ndarray, k: int) -> np.ndarray:
    """(N,) the 0-based rank of each target in its text's top k, k where it is not there."""
    emb = encoder.encode(texts)
    answers = retriever.answer([Query(user_id=None, k=k, text=t) for t in texts], list(emb))
    out = np.full(len(texts), k)
    for i, (answer, target) in enumerate(zip(answers, targets)):
        hit = np.flatnonzero(answer.item_ids == target)
        if hit.size:
            out[i] = hit[0]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path,
                        help="a built repository with text_encoder (freshrec build's out/repository)")
    parser.add_argument("items", type=Path,
                        help="its item file with titles (items.csv, u.item, movies.csv/.dat)")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                        help=f"titled catalogue items re-added as new (default {DEFAULT_SAMPLE})")
    parser.add_argument("--k", type=int, default=10, help="top K searched (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    items = read_items(args.items)
    encoder = TextEncoderRuntime.from_version(
        args.repository / c.TEXT_ENCODER / str(versions.latest_version(
            args.repository / c.TEXT_ENCODER)))
    titled = [i for i, t in enumerate(items.titles) if t.strip()]
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(titled, size=min(args.sample, len(titled)), replace=False)
    titles = [items.titles[i] for i in picked]
    with tempfile.TemporaryDirectory(prefix="bench-text-search-") as scratch:
        folder, new_ids = grown_version(args.repository, Path(scratch), titles, encoder)
        retriever = Retriever(folder)
        print(f"{args.repository}: {len(titles)} titled items added again as new items "
              f"(catalogue {retriever.n_items}), pure text queries, top {args.k}; prior weight "
              f"{retriever.meta.popularity_weight:g} for user queries")
        print(f"{'query':<28}{'in top ' + str(args.k):>12}{'first':>10}{'median rank':>14}")
        for name, texts in (("its own title", titles),
                            ("reworded title", [reword(t) for t in titles])):
            got = ranks(retriever, encoder, texts, new_ids, args.k)
            found = got < args.k
            median = f"{np.median(got[found]):.0f}" if found.any() else "-"
            print(f"{name:<28}{found.mean():>12.3f}{(got == 0).mean():>10.3f}{median:>14}")


if __name__ == "__main__":
    main()
