"""exporter.data: MovieLens readers, the new-items reader, write/read round trip, time split."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.data import (
    DataError,
    Dataset,
    Interactions,
    read_dataset,
    read_interactions,
    read_items,
    read_new_items,
    split_by_time,
    write_dataset,
)
from exporter.synthetic import generate_synthetic

# ---------------------------------------------------------------------------------------------
# readers: one small file per format, written as the MovieLens archives write them

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
RATINGS_DAT = "1::1193::5::978300760\n1::661::3::978302109\n2::1357::4::978298709\n"
RATINGS_CSV = ("userId,movieId,rating,timestamp\n"
               "1,1,4.0,964982703\n1,3,4.5,964981247\n6,1,0.5,845553522\n")

RATINGS_CASES = [
    # (file name, text, expected (user, item, rating, timestamp) rows in time order)
    pytest.param("u.data", U_DATA, [(22, 377, 1.0, 878887116), (196, 242, 3.0, 881250949),
                                    (186, 302, 3.0, 891717742)], id="u.data"),
    pytest.param("ratings.dat", RATINGS_DAT, [(2, 1357, 4.0, 978298709),
                                              (1, 1193, 5.0, 978300760),
                                              (1, 661, 3.0, 978302109)], id="ratings.dat"),
    pytest.param("ratings.csv", RATINGS_CSV, [(6, 1, 0.5, 845553522), (1, 3, 4.5, 964981247),
                                              (1, 1, 4.0, 964982703)], id="ratings.csv"),
]

U_ITEM_FLAGS = {"Animation": 3, "Comedy": 5, "Drama": 8}


def u_item_line(item_id: int, title: str, genres: list[str], unknown: bool = False) -> str:
    flags = ["0"] * 19
    flags[0] = "1" if unknown else "0"
    for g in genres:
        flags[U_ITEM_FLAGS[g]] = "1"
    return "|".join([str(item_id), title, "01-Jan-1995", "", "http://us.imdb.com/x", *flags])


U_ITEM = "\n".join([
    u_item_line(1, "Toy Story (1995)", ["Animation", "Comedy"]),
    u_item_line(2, "Café au lait (1993)", ["Drama", "Comedy"]),  # latin-1 on disk, as ml-100k
    u_item_line(3, "Mystery Film (1994)", [], unknown=True),
]) + "\n"
MOVIES_DAT = ("1::Toy Story (1995)::Animation|Children's|Comedy\n"
              "2::Jumanji (1995)::Adventure|Children's|Fantasy\n")
MOVIES_CSV = ('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
              '11,"American President, The (1995)",Comedy|Drama|Romance\n'
              '182715,Some Film (2018),(no genres listed)\n')
ITEMS_CSV = 'itemId,title,category\n5,"Galaxy, Orbit",space\n6,Bread Soup,\n'

ITEM_CASES = [
    pytest.param("u.item", U_ITEM, "latin-1",
                 [(1, "Toy Story (1995)", "Animation"), (2, "Café au lait (1993)", "Comedy"),
                  (3, "Mystery Film (1994)", "")], id="u.item"),
    pytest.param("movies.dat", MOVIES_DAT, "latin-1",
                 [(1, "Toy Story (1995)", "Animation"), (2, "Jumanji (1995)", "Adventure")],
                 id="movies.dat"),
    pytest.param("movies.csv", MOVIES_CSV, "utf-8",
                 [(1, "Toy Story (1995)", "Adventure"),
                  (11, "American President, The (1995)", "Comedy"),
                  (182715, "Some Film (2018)", "")], id="movies.csv"),
    pytest.param("items.csv", ITEMS_CSV, "utf-8",
                 [(5, "Galaxy, Orbit", "space"), (6, "Bread Soup", "")], id="items.csv"),
]


def write(tmp_path, name: str, text: str, encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize(("name", "text", "rows"), RATINGS_CASES)
def test_read_interactions_formats(tmp_path, name, text, rows):
    got = read_interactions(write(tmp_path, name, text))
    users, items, ratings, stamps = (np.array(col) for col in zip(*rows, strict=True))
    np.testing.assert_array_equal(got.user_ids, users)
    np.testing.assert_array_equal(got.item_ids, items)
    np.testing.assert_array_equal(got.values, ratings.astype(np.float32))
    np.testing.assert_array_equal(got.timestamps, stamps)
    assert [a.dtype for a in (got.user_ids, got.item_ids, got.values, got.timestamps)] == [
        np.int64, np.int64, np.float32, np.int64]
    assert len(got) == len(rows)


@pytest.mark.parametrize(("name", "text", "encoding", "rows"), ITEM_CASES)
def test_read_items_formats(tmp_path, name, text, encoding, rows):
    got = read_items(write(tmp_path, name, text, encoding))
    ids, titles, categories = (list(col) for col in zip(*rows, strict=True))
    assert got.ids.dtype == np.int64
    assert got.ids.tolist() == ids
    assert got.titles == titles
    assert got.categories == categories


MALFORMED_RATINGS = [
    # (file name, text, line, message fragment)
    pytest.param("ratings.csv", RATINGS_CSV + "7,2,3.0\n", 5, "expected 4 fields, got 3",
                 id="field-count"),
    pytest.param("u.data", "1\t2\t3\t881250949\n1\tx2\t3\t881250949\n", 2,
                 "item id 'x2' is not an integer", id="non-integer-id"),
    pytest.param("u.data", "1\t2\t3\t881250949\n\n1.5\t2\t3\t881250949\n", 3,
                 "user id '1.5' is not an integer", id="float-id-after-blank-line"),
    pytest.param("ratings.dat", "1::2::5::978300760\n1::3::five::978300760\n", 2,
                 "rating 'five' is not a number", id="non-numeric-rating"),
    pytest.param("ratings.dat", "1::2::nan::978300760\n", 1, "rating 'nan' is not finite",
                 id="nan-rating"),
    pytest.param("ratings.csv", RATINGS_CSV + "7,2,3.0,-5\n", 5, "timestamp -5 is outside [0, 4102444800]",
                 id="negative-timestamp"),
    pytest.param("ratings.csv", RATINGS_CSV + "7,2,3.0,964982703000\n", 5,
                 "timestamp 964982703000 is outside", id="milliseconds-timestamp"),
    pytest.param("u.data", "-1\t2\t3\t881250949\n", 1, "user id -1 is below 0",
                 id="negative-id"),
    pytest.param("ratings.csv", "user,item,rating,time\n1,2,3,4\n", 1,
                 "unrecognised ratings format", id="unknown-header"),
]


@pytest.mark.parametrize(("name", "text", "line", "fragment"), MALFORMED_RATINGS)
def test_malformed_ratings_name_file_and_line(tmp_path, name, text, line, fragment):
    with pytest.raises(DataError) as err:
        read_interactions(write(tmp_path, name, text))
    assert str(err.value).startswith(f"{name}:{line}: ")
    assert fragment in str(err.value)
    assert err.value.line == line


MALFORMED_ITEMS = [
    pytest.param("movies.dat", MOVIES_DAT + "3::No Genres\n", 3, "expected 3 fields, got 2",
                 id="field-count"),
    pytest.param("u.item", U_ITEM.replace("|0|0|0|1|", "|0|0|0|x|", 1), 1,
                 "genre flags must be 0 or 1", id="bad-flag"),
    pytest.param("movies.csv", MOVIES_CSV + "abc,Title,Drama\n", 5,
                 "item id 'abc' is not an integer", id="non-integer-id"),
    pytest.param("items.csv", ITEMS_CSV + "5,Again,space\n", 4, "item id 5 repeats line 2",
                 id="repeated-id"),
]


@pytest.mark.parametrize(("name", "text", "line", "fragment"), MALFORMED_ITEMS)
def test_malformed_items_name_file_and_line(tmp_path, name, text, line, fragment):
    with pytest.raises(DataError, match=f"^{name}:{line}: .*{fragment}"):
        read_items(write(tmp_path, name, text, "latin-1"))


@pytest.mark.parametrize("reader", [read_interactions, read_items])
@pytest.mark.parametrize("text", ["", "\n\n"], ids=["empty", "blank-lines"])
def test_empty_file_is_an_error(tmp_path, reader, text):
    with pytest.raises(DataError, match="^ratings.csv: file is empty"):
        reader(write(tmp_path, "ratings.csv", text))


def test_header_only_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no interactions after the header"):
        read_interactions(write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n"))


# ---------------------------------------------------------------------------------------------
# new items (`freshrec items add`)


def test_read_new_items_with_and_without_category(tmp_path):
    items = read_new_items(write(tmp_path, "new.csv", 'id,title\n7,"Moon, Rocket"\n\n9, Jazz \n'),
                           max_title_chars=50)
    assert items.ids.tolist() == [7, 9] and items.titles == ["Moon, Rocket", "Jazz"]
    assert items.categories == ["", ""]
    items = read_new_items(write(tmp_path, "items.csv", "itemId,title,category\n3,Café Soup,cooking\n"),
                           max_title_chars=50)
    assert (items.ids.tolist(), items.titles, items.categories) == ([3], ["Café Soup"], ["cooking"])


MALFORMED_NEW_ITEMS = [
    pytest.param(b"item,name\n1,A\n", 1, "expected 'id,title' or 'id,title,category'", id="header"),
    pytest.param(b"id,title\n1,A\n2,B,extra\n", 3, "expected 2 fields", id="field-count"),
    pytest.param(b"id,title\n1,A\nx,B\n", 3, "item id 'x' is not an integer", id="bad-id"),
    pytest.param(b"id,title\n-4,A\n", 2, "item id -4 is below 0", id="negative-id"),
    pytest.param(b"id,title\n1,A\n2,  \n", 3, "title is empty", id="empty-title"),
    pytest.param(b"id,title\n1," + b"x" * 21 + b"\n", 2, "title is too long: 21 characters",
                 id="long-title"),
    pytest.param(b"id,title\n1,A\n2,caf\xe9\n", 3, "not UTF-8 (byte 0xe9)", id="latin-1"),
    pytest.param(b"id,title\n1,A\n1,B\n", 3, "item id 1 repeats line 2", id="repeated-id"),
    pytest.param(b"id,title\n", None, "no items after the header", id="header-only"),
]


@pytest.mark.parametrize(("raw", "line", "fragment"), MALFORMED_NEW_ITEMS)
def test_malformed_new_items_name_file_and_line(tmp_path, raw, line, fragment):
    path = tmp_path / "new.csv"
    path.write_bytes(raw)
    where = "new.csv" if line is None else f"new.csv:{line}"
    with pytest.raises(DataError) as err:
        read_new_items(path, max_title_chars=20)
    assert str(err.value).startswith(f"{where}: ") and fragment in str(err.value), str(err.value)


# ---------------------------------------------------------------------------------------------
# write / read round trip


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate_synthetic(n_users=60, n_items=50, n_events=900, n_categories=5, seed=3)


def test_write_read_round_trip(tmp_path, small):
    ratings = write_dataset(small, tmp_path)
    assert ratings == tmp_path / "ratings.csv"
    assert ratings.read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    for source in (ratings, tmp_path):  # the file, or the folder holding it
        back = read_dataset(source)
        for name in ("user_ids", "item_ids", "values", "timestamps"):
            np.testing.assert_array_equal(getattr(back.interactions, name),
                                          getattr(small.interactions, name), err_msg=name)
        assert back.items is not None
        np.testing.assert_array_equal(back.items.ids, small.items.ids)
        assert back.items.titles == small.items.titles
        assert back.items.categories == small.items.categories


def test_read_dataset_finds_movielens_items_next_to_ratings(tmp_path):
    write(tmp_path, "u.data", U_DATA)
    write(tmp_path, "u.item", U_ITEM, "latin-1")
    dataset = read_dataset(tmp_path / "u.data")
    assert len(dataset.interactions) == 3
    assert dataset.items is not None and dataset.items.ids.tolist() == [1, 2, 3]
    alone = tmp_path / "alone"
    alone.mkdir()
    assert read_dataset(write(alone, "ratings.dat", RATINGS_DAT)).items is None


# ---------------------------------------------------------------------------------------------
# split


def test_split_by_time(small):
    inter = small.interactions
    train, test = split_by_time(inter, train_fraction=0.8)
    assert len(train) == 720 and len(test) == 180
    assert train.timestamps.max() <= test.timestamps.min()
    for name in ("user_ids", "item_ids", "values", "timestamps"):
        joined = np.concatenate([getattr(train, name), getattr(test, name)])
        np.testing.assert_array_equal(joined, getattr(inter, name), err_msg=name)


def test_split_sorts_unsorted_input_by_time():
    inter = Interactions.from_arrays([1, 2, 3, 4], [10, 20, 30, 40], [1, 1, 1, 1],
                                     [400, 100, 300, 200])
    train, test = split_by_time(inter, train_fraction=0.5)
    assert train.user_ids.tolist() == [2, 4] and test.user_ids.tolist() == [3, 1]


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_split_rejects_bad_fraction(small, fraction):
    with pytest.raises(ValueError, match="train_fraction"):
        split_by_time(small.interactions, train_fraction=fraction)
