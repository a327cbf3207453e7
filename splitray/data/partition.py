"""Split a dataset's sample indices among clients: IID, Dirichlet label skew or label shards."""

from __future__ import annotations

import numpy as np

PARTITION_SCHEMES = ("iid", "dirichlet", "shards")


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Sorted int64 sample indices for each of `num_clients` clients, deterministic by `seed`.

    Every scheme gives each sample to exactly one client and each client at least one sample.
    `iid` shuffles and splits into near-equal parts; `dirichlet` draws each class's client shares
    from Dirichlet(alpha) (small alpha = strong label skew); `shards` sorts by label, cuts
    num_clients * shards_per_client shards and gives each client shards_per_client of them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    num_samples = len(labels)
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > num_samples:
        raise ValueError(
            f"num_clients={num_clients} exceeds the {num_samples} samples; each client needs one"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(num_samples), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha!r}")
        parts = _dirichlet(labels, num_clients, float(alpha), rng)
    elif scheme == "shards":
        parts = _shards(labels, num_clients, shards_per_client, rng)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}; allowed: {PARTITION_SCHEMES}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    owner = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, chunk in enumerate(np.split(members, cuts)):
            owner[chunk] = client
    # Fix-up: an empty client takes one random sample from the currently largest client.
    counts = np.bincount(owner, minlength=num_clients)
    for client in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        moved = rng.choice(np.flatnonzero(owner == donor))
        owner[moved] = client
        counts[donor] -= 1
        counts[client] += 1
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(counts)[:-1])


def _shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if (
        isinstance(shards_per_client, bool)
        or int(shards_per_client) != shards_per_client
        or shards_per_client < 1
    ):
        raise ValueError(f"shards_per_client must be an integer >= 1, got {shards_per_client!r}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ValueError(
            f"num_clients * shards_per_client = {num_shards} exceeds the {len(labels)} samples"
        )
    # Shuffle first so that ties within a class are broken at random, then sort by label.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in assignment]
