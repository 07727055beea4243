"""The updater's Prometheus metrics (updater.metrics), scraped from a real updater process."""

from __future__ import annotations

import urllib.request
import uuid

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import Client, UpdaterClient
from freshrec.child_process import wait_until
from model_repository import contract as c
from model_repository import versions
from model_repository.impressions import wait_recording

pytestmark = pytest.mark.integration
WAIT_S = 60.0


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_updater_exports_its_work_with_no_user_or_item_id_in_a_label(repository, stack,
                                                                       start_updater):
    updater = start_updater()
    manifest, tables = versions.load_tables(repository / c.RETRIEVE /
                                            str(versions.latest_version(repository / c.RETRIEVE)))
    item_ids = np.array(tables["item_ids"]).tolist()
    user = 40_000_000 + uuid.uuid4().int % 1_000_000
    prefix = uuid.uuid4().hex
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        status = up.status()
        urls = status["metrics_urls"]
        assert set(urls) == {"updater", "triton"}
        assert urls["triton"] == f"http://{stack.triton.host}:{stack.triton.metrics_port}/metrics"
        before = scrape(urls["updater"])
        wait_recording(repository / c.RETRIEVE, lambda: client.recommend(user, k=5))
        shown = client.recommend(user, k=5).item_ids
        events = [dict(event_id=f"{prefix}-0", user_id=user, item_id=int(shown[0]), kind="click"),
                  dict(event_id=f"{prefix}-1", user_id=user, item_id=item_ids[1], kind="purchase"),
                  dict(event_id=f"{prefix}-2", user_id=user, item_id=item_ids[1], kind="nope"),
                  dict(event_id=f"{prefix}-3", user_id=user, item_id=10**12, kind="click")]
        sent = up.feedback_batch(events)
        up.feedback_batch(events[:1])  # again: a duplicate
        published = up.publish()
        after = wait_until(lambda: (s := scrape(urls["updater"])) and _value(
            s, "freshrec_exposed_events_total", arm="control") > _value(
            before, "freshrec_exposed_events_total", arm="control") and s,
            timeout_s=WAIT_S, interval_s=0.2, what="the click to be attributed")

    def moved(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    accepted = {"outcome": "accepted", "field": ""}
    assert moved("freshrec_feedback_events_total", kind="click", **accepted) == 1
    assert moved("freshrec_feedback_events_total", kind="purchase", **accepted) == 1
    assert moved("freshrec_feedback_events_total", kind="other", outcome="rejected",
                 field="kind") == 1
    assert moved("freshrec_feedback_events_total", kind="click", outcome="rejected",
                 field="item_id") == 1
    assert moved("freshrec_feedback_events_total", kind="click", outcome="duplicate",
                 field="") == 1
    assert moved("freshrec_admin_calls_total", call="publish", outcome="ok") == 1
    assert moved("freshrec_publishes_total", kind="publish") >= 1
    assert moved("freshrec_publish_phase_seconds_count", phase="write") >= 1
    assert moved("freshrec_publish_phase_seconds_count", phase="swap") >= 1
    assert moved("freshrec_train_batch_seconds_count") >= 1
    assert moved("freshrec_exposed_hits_total", arm="control") >= 1  # the click on a shown item
    assert _value(after, "freshrec_impressions_total") >= 1
    assert _value(after, "freshrec_serving_version", model="retrieve") >= published["version"]
    assert _value(after, "freshrec_log_offset") >= sent.last_offset
    assert _value(after, "freshrec_log_lag_events") >= 0
    assert _value(after, "freshrec_quarantined_versions") == 0
    assert 0 <= _value(after, "freshrec_served_newest_event_age_seconds") < 600
    assert _value(after, "freshrec_cpu_seconds_total", part="training") > 0
    labels = {value for _, pairs in after for _, value in pairs}
    ids = {str(user), *map(str, item_ids), str(10**12)}
    assert not labels & ids, labels & ids


def test_staleness_grows_while_events_wait_for_a_publish(repository, start_updater):
    updater = start_updater(args=("--publish-every-s", "1e9", "--publish-every-events", "1000000"))
    item = int(np.array(versions.load_tables(
        repository / c.RETRIEVE / str(versions.latest_version(repository / c.RETRIEVE)))[1]
        ["item_ids"])[0])
    with UpdaterClient(updater.url) as up:
        url = up.status()["metrics_urls"]["updater"]
        up.publish()
        assert _value(scrape(url), "freshrec_unserved_oldest_event_age_seconds") == 0
        up.feedback(41_000_000 + uuid.uuid4().int % 1_000_000, item, "click")
        waited = wait_until(
            lambda: (v := _value(scrape(url), "freshrec_unserved_oldest_event_age_seconds")) > 1
            and v, timeout_s=WAIT_S, interval_s=0.2, what="the unpublished event to age")
        assert _value(scrape(url), "freshrec_queue_depth") >= 1
        up.publish()
        assert _value(scrape(url), "freshrec_unserved_oldest_event_age_seconds") == 0
    assert waited > 1


def test_retrieve_exports_its_parts_batches_and_switches_on_tritons_port(repository, stack,
                                                                       start_updater):
    updater = start_updater()
    triton = f"http://{stack.triton.host}:{stack.triton.metrics_port}/metrics"
    item = int(np.array(versions.load_tables(
        repository / c.RETRIEVE / str(versions.latest_version(repository / c.RETRIEVE)))[1]
        ["item_ids"])[0])
    before = scrape(triton)
    with UpdaterClient(updater.url) as up, Client(stack.grpc_url) as client:
        for user in (1, 2, 3):
            client.recommend(user, k=5)
        up.feedback(42_000_000 + uuid.uuid4().int % 1_000_000, item, "click")
        up.publish()  # a data-only version: retrieve switches to it itself
        client.recommend(1, k=5)
    after = scrape(triton)

    def moved(name, **labels):
        return _value(after, name, model="retrieve", **labels) - _value(
            before, name, model="retrieve", **labels)

    assert moved("freshrec_retrieve_batch_seconds_count") >= 1
    assert moved("freshrec_retrieve_batch_size_count") >= 1
    assert moved("freshrec_retrieve_batch_size_sum") >= 4  # the requests they held
    for part in ("live_read", "tower", "score_topk"):
        assert moved("freshrec_retrieve_part_seconds_count", part=part) >= 1, part
        assert moved("freshrec_retrieve_part_seconds_sum", part=part) > 0, part
    assert moved("freshrec_retrieve_switch_seconds_count") >= 1
    # beside Triton's own, on the same port
    # (the parser names a counter's sample with _total)
    assert any(name == "nv_inference_request_success_total" and ("model", "retrieve") in labels
               for name, labels in after)
