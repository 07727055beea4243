"""Interaction and item data: MovieLens readers and writer, the new-items reader of
`freshrec items add`, and a time-ordered train/test split (the synthetic generator lives in
exporter/synthetic.py).

Everything here is numpy and the standard library (no torch), so the CLI can read and check a
data set without paying for the training stack. Ids are the data set's own (external) ids;
training maps them to table rows.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository.contract import MAX_CATEGORY_CHARS

log = logging.getLogger(__name__)

# 2100-01-01T00:00:00Z. A larger value is almost certainly milliseconds or garbage, not seconds.
MAX_TIMESTAMP_S = 4_102_444_800

RATINGS_CSV_HEADER = ("userId", "movieId", "rating", "timestamp")
MOVIES_CSV_HEADER = ("movieId", "title", "genres")
ITEMS_CSV_HEADER = ("itemId", "title", "category")
# `freshrec items add`: a CSV with one of these headers (our items.csv's header works too)
NEW_ITEMS_HEADERS = (("id", "title"), ("id", "title", "category"), ("itemId", "title"),
                     ITEMS_CSV_HEADER)

RATINGS_FILE_NAMES = ("ratings.csv", "ratings.dat", "u.data")
ITEMS_FILE_NAMES = ("items.csv", "movies.csv", "movies.dat", "u.item")

# u.item: id|title|release date|video release date|IMDb URL|19 genre flags (ml-100k README)
U_ITEM_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
U_ITEM_FIELDS = 5 + len(U_ITEM_GENRES)
NO_GENRE = {"unknown", "(no genres listed)"}  # MovieLens spellings of "no category"


class DataError(ValueError):
    """A data file is malformed; the message starts with ``file:line:`` (1-based line)."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        where = f"{Path(path).name}:{line}" if line is not None else Path(path).name
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


@dataclass(frozen=True, eq=False)  # numpy columns: compare explicitly
class Interactions:
    """Events as equal-length columns, sorted by timestamp (stable).

    user_ids, item_ids: (N,) int64 external ids; values: (N,) float32 rating (1.0 for implicit
    events); timestamps: (N,) int64 unix seconds.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self):
        n = len(self.user_ids)
        for name in ("item_ids", "values", "timestamps"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Interactions.{name} has {len(getattr(self, name))} rows, "
                                 f"user_ids has {n}")

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_arrays(cls, user_ids, item_ids, values, timestamps) -> Interactions:
        """Columns in any order and dtype -> Interactions with canonical dtypes, sorted by time."""
        timestamps = np.asarray(timestamps, dtype=np.int64)
        order = np.argsort(timestamps, kind="stable")
        return cls(
            user_ids=np.asarray(user_ids, dtype=np.int64)[order],
            item_ids=np.asarray(item_ids, dtype=np.int64)[order],
            values=np.asarray(values, dtype=np.float32)[order],
            timestamps=timestamps[order],
        )

    def take(self, index: np.ndarray | slice) -> Interactions:
        """Rows selected by a slice, boolean mask or index array (order kept; index arrays are
        expected to be increasing, so time order holds)."""
        return Interactions(self.user_ids[index], self.item_ids[index], self.values[index],
                            self.timestamps[index])


@dataclass(frozen=True, eq=False)  # numpy columns: compare explicitly
class Items:
    """The item catalogue: ids (I,) int64, titles and categories ("" when unknown) per id."""

    ids: np.ndarray
    titles: list[str]
    categories: list[str]

    def __post_init__(self):
        if not len(self.ids) == len(self.titles) == len(self.categories):
            raise ValueError(f"Items: {len(self.ids)} ids, {len(self.titles)} titles, "
                             f"{len(self.categories)} categories")

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)  # numpy columns: compare explicitly
class Dataset:
    interactions: Interactions
    items: Items | None


# ---------------------------------------------------------------------------------------------
# reading


def _read_text(path: Path) -> str:
    """Decode UTF-8, falling back to latin-1: ml-100k and ml-1m ship latin-1 (their READMEs)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the first field


def _first_line(path: Path, text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise DataError(path, None, "file is empty")


def _check_number(path: Path, line: int, field: str, raw: str, *, kind: type = int,
                  low: float = 0, high: float = math.inf) -> int | float:
    """``kind(raw)``, or a DataError naming the field when raw does not parse, is not finite or
    lies outside [low, high]."""
    try:
        value = kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise DataError(path, line, f"{field} {raw.strip()!r} is not {noun}") from None
    if not math.isfinite(value):
        raise DataError(path, line, f"{field} {raw.strip()!r} is not finite")
    if not low <= value <= high:
        limits = f"below {low}" if high == math.inf else f"outside [{low}, {high}]"
        raise DataError(path, line, f"{field} {value} is {limits}")
    return value


def _ratings_format(path: Path, text: str) -> tuple[str, int]:
    """Detect the ratings format from the first line: (field separator, header lines)."""
    first = _first_line(path, text)
    if "::" in first:
        return "::", 0
    if "\t" in first:
        return "\t", 0
    if tuple(f.strip() for f in first.split(",")) == RATINGS_CSV_HEADER:
        return ",", 1
    raise DataError(path, 1, "unrecognised ratings format: expected u.data (tab separated), "
                             "ratings.dat ('::') or ratings.csv with header "
                             + ",".join(RATINGS_CSV_HEADER))


def _scan_interaction_line(path: Path, line: int, text: str, sep: str) -> None:
    """Raise the DataError that describes what is wrong with one ratings line, if anything."""
    fields = text.split(sep)
    if len(fields) != 4:
        raise DataError(path, line, f"expected 4 fields, got {len(fields)}")
    _check_number(path, line, "user id", fields[0])
    _check_number(path, line, "item id", fields[1])
    _check_number(path, line, "rating", fields[2], kind=float, low=-math.inf)
    _check_number(path, line, "timestamp", fields[3], high=MAX_TIMESTAMP_S)


def _parse_ratings(data: list[str], sep: str) -> tuple[np.ndarray, ...]:
    """Clean lines -> (user_ids, item_ids, values, timestamps); ValueError on anything wrong.

    One join + split over the whole file and numpy string->number casts: about 1.3 s per
    million lines here, against 3-6 s for splitting and converting line by line.
    """
    if any(ln.count(sep) != 3 for ln in data):
        raise ValueError("field count")
    fields = np.array(sep.join(data).split(sep)).reshape(-1, 4)
    user_ids = fields[:, 0].astype(np.int64)
    item_ids = fields[:, 1].astype(np.int64)
    values = fields[:, 2].astype(np.float64)
    timestamps = fields[:, 3].astype(np.int64)
    if (user_ids.min() < 0 or item_ids.min() < 0 or not np.isfinite(values).all()
            or timestamps.min() < 0 or timestamps.max() > MAX_TIMESTAMP_S):
        raise ValueError("range")
    return user_ids, item_ids, values, timestamps


def read_interactions(path: str | Path) -> Interactions:
    """Read MovieLens ``u.data`` (tab), ``ratings.dat`` (``::``) or ``ratings.csv`` (header
    ``userId,movieId,rating,timestamp``, also what :func:`write_dataset` writes).

    The format is detected from the first line; blank lines are skipped. Clean files are parsed
    in bulk; only when that fails are lines re-checked one by one, so the :class:`DataError`
    names the first bad line without slowing down clean files.
    """
    path = Path(path)
    text = _read_text(path)
    sep, header = _ratings_format(path, text)
    lines = text.splitlines()
    data = [ln for ln in lines if ln.strip()][header:]
    if not data:
        raise DataError(path, None, "no interactions after the header")
    try:
        columns = _parse_ratings(data, sep)
    except (ValueError, OverflowError):
        numbered = [(n, ln) for n, ln in enumerate(lines, start=1) if ln.strip()][header:]
        for line, text_line in numbered:
            _scan_interaction_line(path, line, text_line, sep)
        raise DataError(path, None, "malformed ratings (no single bad line found)") from None
    log.info("read %d interactions from %s", len(data), path)
    return Interactions.from_arrays(*columns)


def _first_genre(genres: str) -> str:
    first = genres.split("|")[0].strip()
    return "" if first in NO_GENRE else first


def _u_item_category(path: Path, line: int, fields: list[str]) -> str:
    flags = [f.strip() for f in fields[5:]]
    if any(f not in ("0", "1") for f in flags):
        raise DataError(path, line, "genre flags must be 0 or 1")
    return _first_genre("|".join(g for g, f in zip(U_ITEM_GENRES, flags, strict=True)
                                 if f == "1"))


def _genres_category(path: Path, line: int, fields: list[str]) -> str:
    return _first_genre(fields[2])


def _plain_category(path: Path, line: int, fields: list[str]) -> str:
    return fields[2].strip()


def _item_lines(path: Path, text: str):
    """Detect the items format from the first line.

    Returns (numbered fields, fields per line, category function); id and title are always the
    first two fields.
    """
    first = _first_line(path, text)
    header = tuple(f.strip() for f in next(csv.reader([first])))
    if header in (MOVIES_CSV_HEADER, ITEMS_CSV_HEADER):
        reader = csv.reader(io.StringIO(text))
        next(reader)
        # line_num is the physical line, so a quoted title spanning lines still points right
        numbered = [(reader.line_num, fields) for fields in reader if fields]
        return numbered, 3, (_genres_category if header == MOVIES_CSV_HEADER
                             else _plain_category)
    if "::" in first:  # checked before "|": movies.dat lists genres with "|"
        sep, n_fields, category = "::", 3, _genres_category
    elif "|" in first:
        sep, n_fields, category = "|", U_ITEM_FIELDS, _u_item_category
    else:
        raise DataError(path, 1, "unrecognised items format: expected u.item ('|'), movies.dat "
                                 "('::'), movies.csv (movieId,title,genres) or items.csv "
                                 "(itemId,title,category)")
    numbered = [(n, ln.split(sep)) for n, ln in enumerate(text.splitlines(), start=1)
                if ln.strip()]
    return numbered, n_fields, category


def read_items(path: str | Path) -> Items:
    """Read MovieLens ``u.item`` / ``movies.dat`` / ``movies.csv`` or our ``items.csv``.

    The category is the first genre listed (for ``u.item``: the first genre flag set); MovieLens'
    "unknown" and "(no genres listed)" become "". A malformed line or a repeated id raises
    :class:`DataError` naming the file and line.
    """
    path = Path(path)
    numbered, n_fields, category_of = _item_lines(path, _read_text(path))
    ids: list[int] = []
    titles: list[str] = []
    categories: list[str] = []
    seen: dict[int, int] = {}
    for line, fields in numbered:
        if len(fields) != n_fields:
            raise DataError(path, line, f"expected {n_fields} fields, got {len(fields)}")
        item_id = _check_number(path, line, "item id", fields[0])
        title, category = fields[1], category_of(path, line, fields)
        if item_id in seen:
            raise DataError(path, line, f"item id {item_id} repeats line {seen[item_id]}")
        seen[item_id] = line
        ids.append(item_id)
        titles.append(title.strip())
        categories.append(category)
    if not ids:
        raise DataError(path, None, "no items after the header")
    log.info("read %d items from %s", len(ids), path)
    return Items(ids=np.asarray(ids, dtype=np.int64), titles=titles, categories=categories)


def _csv_rows(path: Path, reader):
    """(physical line, fields) of each non-empty row; csv's own errors become DataError."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(path, reader.line_num, f"malformed CSV: {exc}") from None
        if fields:
            yield reader.line_num, fields


def read_new_items(path: str | Path, *, max_title_chars: int) -> Items:
    """Items to add to a served catalogue (`freshrec items add`): a CSV whose header is
    ``id,title`` or ``id,title,category`` (``itemId`` for ``id`` works too, so a build's
    items.csv can be reused).

    Stricter than :func:`read_items`, because every title becomes an embedding: the file must be
    UTF-8 (no latin-1 fallback), and every title must be non-empty and at most
    ``max_title_chars`` characters. Any problem raises :class:`DataError` naming the file and
    line, before anything is sent.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(path, line, f"not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as "
                                    "UTF-8") from None
    first = _first_line(path, text)
    header = tuple(f.strip() for f in next(csv.reader([first])))
    if header not in NEW_ITEMS_HEADERS:
        raise DataError(path, 1, f"header {','.join(header)!r}: expected 'id,title' or "
                                 "'id,title,category'")
    reader = csv.reader(io.StringIO(text))
    next(reader)
    ids: list[int] = []
    titles: list[str] = []
    categories: list[str] = []
    seen: dict[int, int] = {}
    for line, fields in _csv_rows(path, reader):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(path, line, f"expected {len(header)} fields ({','.join(header)}), "
                                        f"got {len(fields)}")
        item_id = _check_number(path, line, "item id", fields[0])
        if item_id >= 2**63:
            raise DataError(path, line, f"item id {item_id} does not fit in 64 bits")
        title = fields[1].strip()
        if not title:
            raise DataError(path, line, "title is empty")
        if len(title) > max_title_chars:
            raise DataError(path, line, f"title is too long: {len(title)} characters, the limit "
                                        f"is {max_title_chars}")
        category = fields[2].strip() if len(fields) > 2 else ""
        if len(category) > MAX_CATEGORY_CHARS:
            raise DataError(path, line, f"category is too long: {len(category)} characters, the "
                                        f"limit is {MAX_CATEGORY_CHARS}")
        if item_id in seen:
            raise DataError(path, line, f"item id {item_id} repeats line {seen[item_id]}")
        seen[item_id] = line
        ids.append(item_id)
        titles.append(title)
        categories.append(category)
    if not ids:
        raise DataError(path, None, "no items after the header")
    return Items(ids=np.asarray(ids, dtype=np.int64), titles=titles, categories=categories)


def _find_next_to(path: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (path / name).is_file():
            return path / name
    return None


def read_dataset(path: str | Path, items_path: str | Path | None = None) -> Dataset:
    """Read a ratings file (or a folder holding one) and its catalogue.

    Without ``items_path`` the catalogue is the first of items.csv, movies.csv, movies.dat, u.item
    found next to the ratings file; none found gives ``items=None``.
    """
    path = Path(path)
    if path.is_dir():
        found = _find_next_to(path, RATINGS_FILE_NAMES)
        if found is None:
            raise DataError(path, None, f"no {' / '.join(RATINGS_FILE_NAMES)} in this folder")
        path = found
    if items_path is None:
        items_path = _find_next_to(path.parent, ITEMS_FILE_NAMES)
    items = read_items(items_path) if items_path is not None else None
    return Dataset(interactions=read_interactions(path), items=items)


# ---------------------------------------------------------------------------------------------
# writing


def _format_ratings(values: np.ndarray) -> list[str]:
    # MovieLens writes half stars as "4.0"/"3.5"; anything finer keeps float32's 9 digits.
    if np.all(values * 2 == np.round(values * 2)):
        return [f"{v:.1f}" for v in values.tolist()]
    return [f"{v:.9g}" for v in values.tolist()]


def write_dataset(dataset: Dataset, out_dir: str | Path) -> Path:
    """Write ``ratings.csv`` (MovieLens latest header) and, when there is a catalogue,
    ``items.csv`` (itemId,title,category) into ``out_dir``; return the ratings path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inter = dataset.interactions
    ratings_path = out_dir / "ratings.csv"
    lines = [",".join(RATINGS_CSV_HEADER)]
    lines += [f"{u},{i},{r},{t}" for u, i, r, t in zip(
        inter.user_ids.tolist(), inter.item_ids.tolist(), _format_ratings(inter.values),
        inter.timestamps.tolist(), strict=True)]
    ratings_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if dataset.items is not None:
        with open(out_dir / "items.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(ITEMS_CSV_HEADER)
            writer.writerows(zip(dataset.items.ids.tolist(), dataset.items.titles,
                                 dataset.items.categories, strict=True))
    log.info("wrote %d interactions to %s", len(inter), ratings_path)
    return ratings_path


# ---------------------------------------------------------------------------------------------
# splitting


def concat(*parts: Interactions) -> Interactions:
    """Several Interactions as one, sorted by time (stable: ties keep the parts' order)."""
    return Interactions.from_arrays(*(np.concatenate([getattr(p, name) for p in parts])
                                      for name in ("user_ids", "item_ids", "values", "timestamps")))


def split_by_time(interactions: Interactions, *,
                  train_fraction: float = 0.8) -> tuple[Interactions, Interactions]:
    """The earliest ``train_fraction`` of events (by timestamp) vs the rest.

    Interactions are time-sorted, so this is a cut at one index; events sharing the boundary
    second may fall on both sides, but no test event is earlier than a training event.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    cut = int(round(len(interactions) * train_fraction))
    return interactions.take(slice(0, cut)), interactions.take(slice(cut, None))
