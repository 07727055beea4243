"""`freshrec build --feedback-log`: a retrain on the base data plus the updater's logged feedback."""

import numpy as np
import pytest

from exporter import REPOSITORY_DIR
from exporter.build import build
from exporter.data import read_dataset
from exporter.train import METHOD_EASE, TrainConfig
from freshrec.cli import main as cli_main
from freshrec.retrain import FeedbackSourceError, logged_feedback
from model_repository import contract as c
from model_repository import retrieve_schema as schema
from model_repository import versions
from updater.events import validate
from updater.feedback_log import FeedbackLog
from updater.main import LOG_FILE

TINY = dict(n_users=120, n_items=60, n_events=3000, n_categories=4, seed=5)
EASE = TrainConfig(method=METHOD_EASE, dim=8, seed=1)
NEW_USER = 9_000_001


def _logged(path, events):
    log = FeedbackLog(path)
    stored, _ = log.append([validate(f"e{n}", u, i, kind, value, at, now=at)
                            for n, (u, i, kind, value, at) in enumerate(events)])
    log.close()
    return stored


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    build(out, synthetic=True, synthetic_kwargs=TINY, progress=False, tensorrt=False,
          text_encoder=False, config=EASE, search=False)
    return out


def test_logged_feedback_reads_the_positive_events_up_to_the_newest_offset(tmp_path):
    stored = _logged(tmp_path / LOG_FILE, [(1, 10, "click", 0, 100.0), (1, 11, "skip", 0, 101.0),
                                           (2, 12, "rating", 2, 102.0), (2, 13, "rating", 5, 103.0),
                                           (3, 14, "purchase", 0, 99.0)])
    said = []
    interactions, offset = logged_feedback(str(tmp_path), say=said.append)  # the state folder
    assert offset == stored[-1].offset
    # skips and low ratings are left out; time order, each event's own time
    assert interactions.user_ids.tolist() == [3, 1, 2]
    assert interactions.item_ids.tolist() == [14, 10, 13]
    assert interactions.timestamps.tolist() == [99, 100, 103]
    assert said and f"up to offset {offset}" in said[-1]


def test_a_missing_log_is_named_and_never_created(tmp_path):
    with pytest.raises(FeedbackSourceError, match="--feedback-log .*no feedback log there"):
        logged_feedback(str(tmp_path / "nowhere.sqlite"))
    assert not (tmp_path / "nowhere.sqlite").exists()


def test_a_retrain_fits_the_logged_feedback_and_records_its_offset(base, tmp_path):
    dataset = read_dataset(base / "data")
    end = float(dataset.interactions.timestamps[-1])
    items = dataset.interactions.item_ids[:5].tolist()
    stored = _logged(tmp_path / LOG_FILE,
                     [(NEW_USER, item, "click", 0, end + 60 * (n + 1)) for n, item in enumerate(items)])
    feedback, offset = logged_feedback(str(tmp_path / LOG_FILE))
    result = build(tmp_path / "retrained", data=base / "data", progress=False, tensorrt=False,
                   text_encoder=False, config=EASE, search=False, feedback=feedback,
                   feedback_offset=offset)
    version_dir = result.repository / c.RETRIEVE / "1"
    manifest = versions.read_manifest(version_dir)
    assert manifest.feedback_offset == stored[-1].offset == offset
    meta = schema.RetrieveMeta.from_manifest(manifest)
    assert meta.train["refit_events"] == len(dataset.interactions) + len(items)
    assert 0 < meta.train["test"]["model"]["recall@10"] <= 1
    assert meta.train["test"]["to_s"] == int(end + 60 * len(items))  # the feedback is in the report
    # fitted again on every event: the feedback's user has a row and the events as history
    user_ids = versions.load_table(version_dir, manifest, schema.USER_IDS)
    row = int(np.flatnonzero(np.asarray(user_ids) == NEW_USER)[0])
    assert np.abs(versions.load_table(version_dir, manifest, schema.USER_ROWS)[row]).sum() > 0
    # the plain build never saw them
    plain = versions.read_manifest(base / REPOSITORY_DIR / c.RETRIEVE / "1")
    assert plain.feedback_offset == 0
    assert NEW_USER not in versions.load_table(base / REPOSITORY_DIR / c.RETRIEVE / "1", plain,
                                               schema.USER_IDS).tolist()


def test_the_cli_retrains_from_a_log_and_says_so(base, tmp_path, capsys):
    stored = _logged(tmp_path / LOG_FILE, [(NEW_USER, 1, "click", 0, 2e9)])
    assert cli_main(["build", "--data", str(base / "data"), "--out", str(tmp_path / "r"),
                     "--feedback-log", str(tmp_path / LOG_FILE), "--no-text-encoder", "--quiet",
                     "--dim", "8", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert f"feedback log: 1 positive events up to offset {stored[-1].offset}" in out
    assert f"freshrec push {tmp_path / 'r'}" in out
    manifest = versions.read_manifest(tmp_path / "r" / REPOSITORY_DIR / c.RETRIEVE / "1")
    assert manifest.feedback_offset == stored[-1].offset
    assert cli_main(["build", "--data", str(base / "data"), "--out", str(tmp_path / "x"),
                     "--feedback-log", str(tmp_path / "none")]) == 1
    assert "--feedback-log" in capsys.readouterr().err


def test_a_retrain_with_text_reports_cold_items_as_a_plain_build_does(builds, tmp_path):
    """With no logged event the 80 / 20 split is the plain build's, so is the whole report; the
    exported base's titled items without events still get rows from their titles."""
    from exporter.data import Interactions
    from tests.fixtures.builds import TEXT

    plain = builds.get(TEXT)
    empty = Interactions.from_arrays([], [], [], [])
    retrained = build(tmp_path, data=plain.ratings, progress=False, tensorrt=False,
                      text_encoder=True, config=TEXT.train, search=False, feedback=empty,
                      feedback_offset=0)
    assert retrained.cold_items == plain.cold_items > 0
    assert retrained.cold_quality_table == plain.cold_quality_table
    assert retrained.quality_table == plain.quality_table
    version_dir = retrained.repository / c.RETRIEVE / "1"
    manifest = versions.read_manifest(version_dir)
    assert schema.RetrieveMeta.from_manifest(manifest).text_encoder_version == 1
    assert set(schema.TEXT_TABLES) <= set(manifest.tables)
