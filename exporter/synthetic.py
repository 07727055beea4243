"""A synthetic MovieLens-like data set with known structure: categories with their own title
words, power-law item popularity, heavy-tailed user activity and interests that drift over time.

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
    """Heavy-tailed activity (lognormal), at least one event each, at most ``cap``, exactly
    ``n_events`` in total."""
    floor = min(5, n_events // n_users)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    counts = np.full(n_users, floor, dtype=np.int64)
    left = n_events - counts.sum()
    while left > 0:
        open_users = counts < cap
        p = np.where(open_users, activity, 0.0)
        counts += rng.multinomial(left, p / p.sum())
        counts = np.minimum(counts, cap)
        left = n_events - counts.sum()
    return counts


def _user_events(n: int, item_category, popularity, category_pop, rng):
    """One user's n events: (item indices, timestamps in [0, span), preferred flags).

    Preferences are a mixture over 1-3 categories that shifts at random times (a Poisson process,
    about two shifts per 90 days); between shifts items are drawn without replacement from
    (mixture over categories) x (Zipf popularity within the category), with 10 % exploration
    across the whole catalogue. Sampling without replacement uses Gumbel top-k, whose order is
    the order of sequential draws.
    """
    n_categories = len(category_pop)
    start = rng.uniform(0.0, 0.5) * SYNTHETIC_SPAN_S
    times = np.sort(rng.uniform(start, SYNTHETIC_SPAN_S, size=n)).astype(np.int64)
    n_shifts = rng.poisson(2.0 * (SYNTHETIC_SPAN_S - start) / SYNTHETIC_SPAN_S)
    shifts = np.sort(rng.uniform(start, SYNTHETIC_SPAN_S, size=n_shifts))
    segment = np.searchsorted(shifts, times, side="right")

    liked = list(rng.choice(n_categories, size=rng.integers(1, 4), replace=False, p=category_pop))
    log_pop = np.log(popularity)
    # divide by each category's popularity mass so cat_weight is the chance of the category
    cat_mass = np.bincount(item_category, weights=popularity, minlength=n_categories)
    taken = np.zeros(len(item_category), dtype=bool)
    items = np.empty(n, dtype=np.int64)
    preferred = np.empty(n, dtype=bool)
    for s in range(n_shifts + 1):
        if s > 0:  # interest shift: one liked category is replaced by a new one
            fresh = rng.choice(n_categories, p=category_pop)
            liked[rng.integers(len(liked))] = fresh
        mix = rng.dirichlet(np.ones(len(liked)))
        cat_weight = np.full(n_categories, 0.1 / n_categories)
        np.add.at(cat_weight, liked, 0.9 * mix)
        logits = np.log(cat_weight[item_category] / cat_mass[item_category]) + log_pop
        keys = np.where(taken, -np.inf, logits + rng.gumbel(size=logits.size))
        rows = np.flatnonzero(segment == s)
        order = np.argsort(-keys)[: rows.size]
        items[rows] = order
        preferred[rows] = np.isin(item_category[order], liked)
        taken[order] = True
    return items, times, preferred


def generate_synthetic(*, n_users: int = DEFAULT_SYNTHETIC_USERS,
                       n_items: int = DEFAULT_SYNTHETIC_ITEMS,
                       n_events: int = DEFAULT_SYNTHETIC_EVENTS,
                       n_categories: int = DEFAULT_SYNTHETIC_CATEGORIES,
                       seed: int = 0, progress: bool = False) -> Dataset:
    """A MovieLens-like data set with known structure, deterministic for a seed.

    - items: a category each and a 2-4 word title mostly drawn from that category's words;
      power-law (Zipf, exponent ITEM_ZIPF_EXPONENT = 1.1) popularity across and within
      categories.
    - users: lognormal activity; 1-3 preferred categories that drift at random times (see
      ``_user_events``), so recent history predicts the next events better than old history.
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

    user_col, item_col, time_col, pref_col = [], [], [], []
    for u in tqdm(range(n_users), desc="synthetic users", disable=not progress):
        item_rows, times, preferred = _user_events(int(counts[u]), item_category, popularity,
                                                   category_pop, rng)
        user_col.append(np.full(item_rows.size, u + 1, dtype=np.int64))
        item_col.append(item_rows)
        time_col.append(times)
        pref_col.append(preferred)
    item_rows = np.concatenate(item_col)
    preferred = np.concatenate(pref_col)
    raw = (2.6 + 1.3 * preferred + quality[item_rows]
           + rng.normal(0.0, 0.7, size=item_rows.size))
    ratings = np.clip(np.round(raw), 1, 5)
    interactions = Interactions.from_arrays(
        np.concatenate(user_col), items.ids[item_rows], ratings,
        SYNTHETIC_START_S + np.concatenate(time_col))
    return Dataset(interactions=interactions, items=items)
