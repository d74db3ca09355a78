"""Deterministic split of a training set into the supernet-training part and the held-out search part.

Like aw_nas's ``data_portion``: the search part scores candidate architectures and is never seen by
supernet training, so candidates are ranked on data the shared weights did not fit.

The split depends only on ``(num_images, search_fraction, seed)``: image ``i`` is ranked by a keyed
BLAKE2b hash of ``(seed, i)`` and the lowest-ranked images form the search part. Unlike a seeded
RNG permutation, this gives the same split on every platform, process and numpy / torch version.
"""
from __future__ import annotations

import hashlib
import math
import operator

from ..errors import ConfigError

__all__ = ["split_train_search"]


def _rank(seed: int, i: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8, person=b"nasdet-split").digest()


def split_train_search(num_images: int, search_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train_indices, search_indices)``: sorted, disjoint, together ``range(num_images)``.

    ``search_fraction`` in ``[0, 1)``; the search part has ``round(num_images * search_fraction)``
    images, but at least 1 when ``search_fraction > 0`` and ``num_images >= 2``, and the train part
    always keeps at least one image (when there is one).
    """
    try:
        num_images = operator.index(num_images)
    except TypeError:
        raise ConfigError(f"num_images must be an integer, got {num_images!r}") from None
    if num_images < 0:
        raise ConfigError(f"num_images must be >= 0, got {num_images}")
    try:
        fraction = float(search_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"search_fraction must be a number in [0, 1), got {search_fraction!r}") from None
    if not (0.0 <= fraction < 1.0) or math.isnan(fraction):
        raise ConfigError(f"search_fraction must be in [0, 1), got {search_fraction!r}")
    seed = operator.index(seed)

    n_search = int(math.floor(num_images * fraction + 0.5))  # round half up, not banker's rounding
    if fraction > 0 and num_images >= 2:
        n_search = max(1, n_search)
    n_search = min(n_search, max(num_images - 1, 0))
    if n_search == 0:
        return list(range(num_images)), []
    order = sorted(range(num_images), key=lambda i: _rank(seed, i))
    search = sorted(order[:n_search])
    search_set = set(search)
    train = [i for i in range(num_images) if i not in search_set]
    return train, search
