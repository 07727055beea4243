"""A synthetic MovieLens-like data set with known structure: categories with their own title
words, power-law item popularity that drifts and new items released over the span, heavy-tailed
user activity in bursty sessions, and interests that drift over time.

numpy only, like exporter/data.py, whose Dataset it returns (write it with ``write_dataset``).
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from exporter.data import Dataset, Interactions, Items

DEFAULT_SYNTHETIC_USERS = 2000
DEFAULT_SYNTHETIC_ITEMS = 1000
DEFAULT_SYNTHETIC_EVENTS = 100_000
DEFAULT_SYNTHETIC_CATEGORIES = 12
SYNTHETIC_START_S = 1_700_000_000  # 2023-11-14, an arbitrary fixed epoch so files are stable
SYNTHETIC_SPAN_S = 90 * 86_400
ITEM_ZIPF_EXPONENT = 1.1
# The shape in time, set from `python -m bench.logstats` on the real logs of bench/DATASETS.md
# (issue 14: online learning looked good on a generator without bursts and flat on real logs).
# There, 94-98 % of MovieLens events (22 % on MovieTweetings) come < 30 min after the user's
# previous one, a user's sessions are a median 97-121 h apart, p90 / p50 events per user is 3.7-8,
# 4-19 % of the items are first seen in the latest 20 % of the log and the top-100 items of the
# earliest and the latest 20 % overlap by 0.22-0.63. The default set here: 89 %, 61 h, 3.7, 7 %,
# 0.53 (the generator without sessions or releases: 3 %, 14 h, 3.0, 0 %, 0.82).
USER_ACTIVITY_SIGMA = 1.2  # lognormal events per user
SESSION_EVENTS_MEAN = 6  # events per session of the median user (geometric)
EVENT_GAP_MEAN_S = 150  # between events of one session, exponential
USER_WINDOW_MEDIAN_DAYS = 30  # how long a user with SESSIONS_AT_MEDIAN_WINDOW sessions stays
SESSIONS_AT_MEDIAN_WINDOW = 6
USER_WINDOW_SIGMA = 0.8
SESSION_FOCUS = 0.5  # share of a session's category mixture on one of the user's liked ones
NEW_ITEM_SHARE = 0.3  # items released during the span (the rest exist from day 0)
RELEASE_BOOST = 4.0  # a new release starts 1 + RELEASE_BOOST times its base popularity
RELEASE_DECAY_DAYS = 10.0
POPULARITY_TREND_SD = 1.0  # log-popularity change over the span, per item

# Real words, so a text encoder (MiniLM) sees category meaning in titles, not just token ids;
# no word belongs to two lists (tests/test_synthetic.py checks that, and that titles predict
# the category).
CATEGORY_VOCABULARY = {
    "space": "galaxy orbit rocket planet nebula comet astronaut moon asteroid starship "
             "cosmos satellite",
    "cooking": "recipe kitchen spice bread oven pasta soup garlic baking chef flavor dessert",
    "sports": "football match stadium league goal champion tennis coach sprint marathon "
              "tournament referee",
    "music": "guitar melody concert rhythm piano symphony chorus drum jazz album singer band",
    "travel": "journey island passport voyage mountain beach harbor backpack coast road map "
              "expedition",
    "history": "empire dynasty ancient medieval kingdom revolution pharaoh castle war treaty "
               "chronicle emperor",
    "science": "atom molecule experiment laboratory physics chemistry theory quantum cell "
               "genome microscope energy",
    "romance": "love heart kiss wedding romance sweetheart passion bride valentine embrace "
               "darling affair",
    "crime": "detective murder heist gangster alibi police robbery suspect mafia trial "
             "prison clue",
    "nature": "forest river wildlife ocean jungle tiger eagle glacier desert volcano wolf "
              "meadow",
    "comedy": "laugh joke prank silly clown comic giggle farce parody sitcom blunder goofy",
    "horror": "ghost haunted zombie vampire nightmare curse demon scream blood witch grave "
              "shadow",
    "finance": "market stock money bank investor profit wallet budget trader dividend "
               "economy fund",
    "fantasy": "dragon wizard elf sorcerer quest spell unicorn sword enchanted fairy magic "
               "legend",
    "technology": "robot computer software network digital circuit algorithm gadget code "
                  "internet data machine",
    "health": "fitness yoga diet wellness doctor medicine sleep nutrition workout therapy "
              "vitamin healing",
}
SHARED_TITLE_WORDS = ("the", "new", "great", "story", "guide", "classic", "ultimate", "life",
                      "secret", "world", "return", "collection")


def _category_words(n_categories: int) -> list[tuple[str, list[str]]]:
    named = [(name, words.split()) for name, words in CATEGORY_VOCABULARY.items()]
    # Beyond the hand-written list, made-up but still category-unique words keep the signal.
    extra = [(f"category{c}", [f"{w}{c}" for w in ("alpha", "beta", "gamma", "delta", "omega",
                                                    "sigma", "theta", "kappa")])
             for c in range(len(named), n_categories)]
    return (named + extra)[:n_categories]


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law weights 1/rank**exponent over a random permutation of n things, summing to 1."""
    ranks = rng.permutation(n) + 1
    w = ranks.astype(np.float64) ** -exponent
    return w / w.sum()


def _synthetic_items(n_items: int, n_categories: int, rng: np.random.Generator):
    vocab = _category_words(n_categories)
    category_share = _zipf_weights(n_categories, 0.5, rng)  # some categories are bigger
    item_category = rng.choice(n_categories, size=n_items, p=category_share)
    titles = []
    for c in item_category:
        words = vocab[c][1]
        n_words = int(rng.integers(2, 5))
        n_own = max(1, int((rng.random(n_words) < 0.8).sum()))  # most words carry the category
        title = [*rng.choice(words, size=n_own, replace=False),
                 *rng.choice(SHARED_TITLE_WORDS, size=n_words - n_own, replace=False)]
        titles.append(" ".join(rng.permutation(title)).title())
    # One global Zipf ranking: popularity is power-law across the catalogue and, because the
    # ranking is a random permutation, also within each category.
    popularity = _zipf_weights(n_items, ITEM_ZIPF_EXPONENT, rng)
    quality = rng.normal(0.0, 0.5, size=n_items)  # per-item rating bias
    items = Items(ids=np.arange(1, n_items + 1, dtype=np.int64), titles=titles,
                  categories=[vocab[c][0] for c in item_category])
    return items, item_category, popularity, quality


def _events_per_user(n_users: int, n_events: int, cap: int, rng: np.random.Generator):
    """Heavy-tailed activity (lognormal, sigma USER_ACTIVITY_SIGMA), at least one event each, at
    most ``cap``, exactly ``n_events`` in total."""
    floor = min(5, n_events // n_users)
    activity = rng.lognormal(0.0, USER_ACTIVITY_SIGMA, size=n_users)
    counts = np.full(n_users, floor, dtype=np.int64)
    left = n_events - counts.sum()
    while left > 0:
        open_users = counts < cap
        p = np.where(open_users, activity, 0.0)
        counts += rng.multinomial(left, p / p.sum())
        counts = np.minimum(counts, cap)
        left = n_events - counts.sum()
    return counts


def _release_days(n_items: int, n_days: int, rng: np.random.Generator) -> np.ndarray:
    """(n_items,) the day each item can first be consumed: 0 for the back catalogue, a uniform day
    of the span for NEW_ITEM_SHARE of the items (new releases)."""
    release = np.zeros(n_items, dtype=np.int64)
    new = rng.permutation(n_items)[: int(NEW_ITEM_SHARE * n_items)]
    release[new] = rng.integers(1, n_days, size=new.size)
    return release


def _daily_log_popularity(popularity, release_day, n_days: int, rng: np.random.Generator):
    """(n_days, n_items) log popularity per day, -inf before an item's release.

    Each item's base (Zipf) weight drifts log-linearly over the span (slope ~ N(0,
    POPULARITY_TREND_SD) per span), and a new release starts at 1 + RELEASE_BOOST times its base,
    the excess decaying with time constant RELEASE_DECAY_DAYS: the top items of the first and the
    last weeks differ, as on real logs.
    """
    days = np.arange(n_days, dtype=np.float64)[:, None]
    trend = rng.normal(0.0, POPULARITY_TREND_SD, size=popularity.size)
    log_pop = np.log(popularity) + trend * (days / n_days - 0.5)
    age = days - release_day
    is_new = release_day > 0
    with np.errstate(over="ignore"):  # age < 0 (not released yet) is masked just below
        boost = np.log1p(RELEASE_BOOST * np.exp(-age / RELEASE_DECAY_DAYS))
    log_pop = log_pop + np.where(is_new, boost, 0.0)
    return np.where(age >= 0, log_pop, -np.inf)


def _session_times(n: int, activity: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One user's n event times in [0, SYNTHETIC_SPAN_S), grouped by session, and the number of
    events in each session (their sum is n).

    Sessions hold geometric numbers of events, on average SESSION_EVENTS_MEAN * sqrt(activity)
    (at least 1), where activity is n over the median user's count: heavy users binge, as on
    MovieLens, where the median event sits in a session of 80-110. Exponential gaps (mean
    EVENT_GAP_MEAN_S) inside them; sessions start at uniform times over the user's active
    window, whose length is lognormal around USER_WINDOW_MEDIAN_DAYS (longer for users with more
    sessions) and whose start is uniform where it fits in the span. So a user acts in bursts
    minutes apart, bursts days apart, then stops, like the users of real logs.
    """
    sizes = rng.geometric(1.0 / max(1.0, SESSION_EVENTS_MEAN * activity ** 0.5), size=n)
    n_sessions = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:n_sessions]
    sizes[-1] -= sizes.sum() - n
    window = min(0.99 * SYNTHETIC_SPAN_S, USER_WINDOW_MEDIAN_DAYS * 86_400
                 * (n_sessions / SESSIONS_AT_MEDIAN_WINDOW) ** 0.5
                 * rng.lognormal(0.0, USER_WINDOW_SIGMA))
    first = rng.uniform(0.0, SYNTHETIC_SPAN_S - window)
    starts = np.sort(rng.uniform(first, first + window, size=n_sessions))
    firsts = np.cumsum(sizes) - sizes
    gaps = rng.exponential(EVENT_GAP_MEAN_S, size=n)
    gaps[firsts] = 0.0  # each session's first event is at its start
    elapsed = np.cumsum(gaps)
    offsets = elapsed - np.repeat(elapsed[firsts], sizes)
    times = np.minimum(np.repeat(starts, sizes) + offsets, SYNTHETIC_SPAN_S - 1)
    return times.astype(np.int64), sizes


def _user_events(n: int, activity: float, item_category, day_log_pop, day_log_cat_mass,
                 category_pop, rng):
    """One user's n events: (item indices, timestamps in [0, span), preferred flags).

    Times come in sessions (``_session_times``). Preferences are a mixture over 1-3 categories
    that shifts at random times (a Poisson process, about two shifts per 90 days of the user's
    window); each session leans on one of the liked categories (SESSION_FOCUS of its mixture).
    A session's items are drawn without replacement from (mixture over categories) x (that
    day's popularity within the category, released items only), with 10 % exploration across
    the whole catalogue. Sampling without replacement uses Gumbel top-k, whose order is the
    order of sequential draws.
    """
    n_categories = len(category_pop)
    times, sizes = _session_times(n, activity, rng)
    starts = times[np.cumsum(sizes) - sizes]
    n_shifts = rng.poisson(2.0 * (starts[-1] - starts[0]) / SYNTHETIC_SPAN_S)
    shifts = np.sort(rng.uniform(starts[0], starts[-1], size=n_shifts))
    segment = np.searchsorted(shifts, starts, side="right")

    liked = list(rng.choice(n_categories, size=rng.integers(1, 4), replace=False, p=category_pop))
    mix = rng.dirichlet(np.ones(len(liked)))
    taken = np.zeros(len(item_category), dtype=bool)
    items = np.empty(n, dtype=np.int64)
    preferred = np.empty(n, dtype=bool)
    row = 0
    for s, start in enumerate(starts):
        if s > 0 and segment[s] != segment[s - 1]:
            for _ in range(segment[s] - segment[s - 1]):  # each shift replaces a liked category
                liked[rng.integers(len(liked))] = rng.choice(n_categories, p=category_pop)
            mix = rng.dirichlet(np.ones(len(liked)))
        focus = np.zeros(len(liked))
        focus[rng.choice(len(liked), p=mix)] = 1.0
        cat_weight = np.full(n_categories, 0.1 / n_categories)
        np.add.at(cat_weight, liked, 0.9 * ((1.0 - SESSION_FOCUS) * mix + SESSION_FOCUS * focus))
        day = int(start // 86_400)
        # divide by the category's popularity mass that day so cat_weight is its chance
        with np.errstate(divide="ignore", invalid="ignore"):  # unreleased items: -inf, masked
            logits = (np.log(cat_weight) - day_log_cat_mass[day])[item_category] + day_log_pop[day]
        size = int(sizes[s])
        # the back catalogue (day 0, at least 0.7 * n_items) outnumbers the user's n <= n_items
        # // 2 events, so at least `size` keys are finite
        keys = np.where(taken | ~np.isfinite(logits), -np.inf,
                        logits + rng.gumbel(size=logits.size))
        top = np.argpartition(-keys, size - 1)[:size]
        order = top[np.argsort(-keys[top], kind="stable")]
        items[row:row + size] = order
        preferred[row:row + size] = np.isin(item_category[order], liked)
        taken[order] = True
        row += size
    return items, times, preferred


def generate_synthetic(*, n_users: int = DEFAULT_SYNTHETIC_USERS,
                       n_items: int = DEFAULT_SYNTHETIC_ITEMS,
                       n_events: int = DEFAULT_SYNTHETIC_EVENTS,
                       n_categories: int = DEFAULT_SYNTHETIC_CATEGORIES,
                       seed: int = 0, end_s: float | None = None,
                       progress: bool = False) -> Dataset:
    """A MovieLens-like data set with known structure, deterministic for a seed.

    ``end_s``: the newest event's Unix time (the demo passes the build's time, so its events end
    near it, as a live log's would; issue 27); None: the span starts at the fixed
    SYNTHETIC_START_S, so files are stable across runs. Only the times shift with it.

    - items: a category each and a 2-4 word title mostly drawn from that category's words;
      power-law (Zipf, exponent ITEM_ZIPF_EXPONENT = 1.1) popularity across and within
      categories that drifts over the span; NEW_ITEM_SHARE of them are released during it
      (never consumed before, briefly more popular after: ``_daily_log_popularity``).
    - users: lognormal activity, in sessions of several events minutes apart, sessions days
      apart within an active window of weeks (``_session_times``); 1-3 preferred categories
      that drift at random times (``_user_events``), so recent history, and the current
      session most, predicts the next events better than old history.
    - events: no repeated (user, item) pair, timestamps over 90 days, ratings 1-5 higher for
      preferred categories and good items. User ids are 1..n_users, item ids 1..n_items.
    """
    if n_users < 1 or n_items < 2 or n_categories < 1:
        raise ValueError(f"need n_users >= 1, n_items >= 2, n_categories >= 1; got "
                         f"{n_users}, {n_items}, {n_categories}")
    cap = max(1, n_items // 2)
    if not n_users <= n_events <= n_users * cap:
        raise ValueError(f"n_events must be in [n_users, n_users * n_items // 2] = "
                         f"[{n_users}, {n_users * cap}], got {n_events}")
    rng = np.random.default_rng(seed)
    items, item_category, popularity, quality = _synthetic_items(n_items, n_categories, rng)
    category_pop = _zipf_weights(n_categories, 0.7, rng)
    counts = _events_per_user(n_users, n_events, cap, rng)
    n_days = -(-SYNTHETIC_SPAN_S // 86_400)
    day_log_pop = _daily_log_popularity(popularity, _release_days(n_items, n_days, rng), n_days,
                                        rng)
    mass = np.stack([np.bincount(item_category, weights=np.exp(row), minlength=n_categories)
                     for row in day_log_pop])
    with np.errstate(divide="ignore"):  # a category with nothing released yet: masked later
        day_log_cat_mass = np.log(mass)

    median_count = float(np.median(counts))
    user_col, item_col, time_col, pref_col = [], [], [], []
    for u in tqdm(range(n_users), desc="synthetic users", disable=not progress):
        item_rows, times, preferred = _user_events(
            int(counts[u]), counts[u] / median_count, item_category, day_log_pop,
            day_log_cat_mass, category_pop, rng)
        user_col.append(np.full(item_rows.size, u + 1, dtype=np.int64))
        item_col.append(item_rows)
        time_col.append(times)
        pref_col.append(preferred)
    item_rows = np.concatenate(item_col)
    preferred = np.concatenate(pref_col)
    raw = (2.6 + 1.3 * preferred + quality[item_rows]
           + rng.normal(0.0, 0.7, size=item_rows.size))
    ratings = np.clip(np.round(raw), 1, 5)
    times = np.concatenate(time_col)
    start = SYNTHETIC_START_S if end_s is None else int(end_s) - int(times.max())
    interactions = Interactions.from_arrays(
        np.concatenate(user_col), items.ids[item_rows], ratings, start + times)
    return Dataset(interactions=interactions, items=items)
