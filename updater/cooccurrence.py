"""Item rows learned from who takes them: those outside the closed-form fit, and fitted ones.

A closed-form version carries the fit's co-occurrence map (retrieve table item_cooccurrence,
exporter.closed_form.cooccurrence_map): row k is what one co-occurrence with fitted item k adds
to the row of an item outside the fit, so that the item scores as EASE's own ridge regression of
its occurrences on the fitted items would. Such an item (new after the build, added from its
title, or titled but without training events) takes, at each positive event, the map's rows of
the items in the user's stored history before it: its row is the sum over its co-occurrences,
whatever it started from (zero, or its projected title as a prior that the events outgrow).
With ``fitted_too`` (the default, TrainerConfig.cooccurrence_fitted) a fitted item takes them
too: refitting EASE with the event changes its column by the ridge regression of the user's
history on the other items, ``P_-j c_H``, whose first-order part is the same ``c_H^T M`` (the
rest shrinks the column along itself; left out). Measured on four logs it never cost recall and
lifted MovieTweetings' replay from x1.408 to x1.647 publishing off (updater/settings.py).
Numpy only.
"""

from __future__ import annotations

import numpy as np


class CooccurrenceRows:
    """``cooc_map`` (I0, d) float32, the version's map, or None (a trained tower: nothing)."""

    def __init__(self, cooc_map: np.ndarray | None, *, fitted_too: bool = False):
        self.map = None if cooc_map is None else np.asarray(cooc_map, np.float32)
        self.fitted_too = fitted_too  # fitted items learn too (first-order Dynamic EASE)
        # items the fit saw have a non-zero map row; the rest, and items added later, learn here
        self.fitted = (np.zeros(0, bool) if self.map is None
                       else np.einsum("ij,ij->i", self.map, self.map) > 0)

    def learn(self, item_rows: np.ndarray, item_row: int, history: np.ndarray) -> bool:
        """Add one positive event of item row ``item_row`` by a user whose stored history rows
        (before it; -1 for empty) are ``history``, in place in ``item_rows`` (I, d). Returns
        whether the row changed: False for a fitted item (unless ``fitted_too``), a version
        without a map, or a user with no fitted item in their history."""
        if self.map is None or (item_row < len(self.fitted) and self.fitted[item_row]
                                and not self.fitted_too):
            return False
        rows = history[(history >= 0) & (history < len(self.fitted))]
        rows = rows[self.fitted[rows]]  # unfitted items (this one too) have no map row
        if not rows.size:
            return False
        item_rows[item_row] += self.map[rows].sum(axis=0)
        return True

    def learn_whole(self, item_rows: np.ndarray, item_row: int, user_sum: np.ndarray,
                    history: np.ndarray) -> bool:
        """As `learn`, but an item outside the fit takes the user's whole history: ``user_sum``
        is their row of the version's user_cooccurrence, ``x_u M`` over every item they took
        before this event, so its row is exactly the coordinates of EASE's ``P c_j`` (the stored
        history holds the last H items only). A fitted item (with ``fitted_too``) still takes
        the stored history's: its first-order update leaves out the term that shrinks its
        column, which grows with the history (whole histories cost recall on ml-latest-small,
        updater/settings.py). Then the event's own item joins the sum, in place. Returns
        whether ``item_rows`` changed."""
        if self.map is None:
            return False
        fitted = item_row < len(self.fitted) and bool(self.fitted[item_row])
        if fitted:
            changed = self.learn(item_rows, item_row, history)
            user_sum += self.map[item_row]
            return changed
        if not np.any(user_sum):
            return False
        item_rows[item_row] += user_sum
        return True
