"""Split the training rows across federated clients: iid, shards:K, dirichlet:ALPHA, by:COLUMN.

Every scheme is seeded and vectorised (numpy over the label array, no per-row Python), puts every training row
in exactly one client, and reports each client's size and classes. A client left without rows is an error that
names it; clients that lack some classes (the point of a non-IID split) are reported with counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlforge.core.errors import DataError, DlforgeError, RecipeError
from dlforge.recipe.federated import parse_partition

DIRICHLET_TRIES = 100  # re-draws until no client is empty (as Hsu et al. 2019's reference code does)


@dataclass
class Partition:
    """Row indices (into the training split) of each client, and what each client holds."""

    spec: str
    clients: list[np.ndarray]
    classes: list[np.ndarray] | None = None  # per client: row count of each class (None without class labels)
    labels: list | None = None  # class names, in the order of `classes`' columns

    def sizes(self) -> np.ndarray:
        return np.array([len(c) for c in self.clients])

    def summary(self) -> list[str]:
        """Lines for the terminal and metrics.json: sizes, classes per client, clients that lack a class."""
        sizes = self.sizes()
        lines = [f"partition {self.spec}: {len(self.clients)} clients, {int(sizes.sum())} training rows; rows per "
                 f"client min {sizes.min()}, mean {sizes.mean():.1f}, max {sizes.max()}"]
        if self.classes is not None:
            held = (self.classes > 0).sum(1)
            n_classes = self.classes.shape[1]
            lacking = np.flatnonzero(held < n_classes)
            lines.append(f"  classes per client: min {held.min()}, mean {held.mean():.2f}, max {held.max()} "
                         f"of {n_classes}")
            if len(lacking):
                first = int(lacking[0])
                holds = ", ".join(f"{self.labels[j]} ({int(self.classes[first, j])})"
                                  for j in np.flatnonzero(self.classes[first]))
                lines.append(f"  {len(lacking)} client(s) lack at least one class (non-IID); e.g. client {first + 1} "
                             f"holds only {holds}")
        return lines

    def as_dict(self) -> dict:
        sizes = self.sizes()
        out = {"spec": self.spec, "clients": len(self.clients), "rows": int(sizes.sum()),
               "rows_per_client": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())}}
        if self.classes is not None:
            held = (self.classes > 0).sum(1)
            out["classes_per_client"] = {"min": int(held.min()), "mean": float(held.mean()), "max": int(held.max())}
            out["clients_lacking_a_class"] = int((held < self.classes.shape[1]).sum())
        return out


def partition_rows(spec: str, n_clients: int, *, labels: np.ndarray | None = None, column: np.ndarray | None = None,
                   seed: int = 0, class_names: list | None = None) -> Partition:
    """Split rows 0..n-1 (n = len(labels) or len(column)) into `n_clients` clients by the scheme `spec`.

    `labels`: integer class codes of the training rows (needed by shards and dirichlet; used for the report);
    `column`: the values of the by:COLUMN column for the training rows.
    """
    scheme, arg = parse_partition(spec)
    n = len(labels) if labels is not None else len(column) if column is not None else 0
    rng = np.random.default_rng(seed)
    where = "federated.partition"
    if n_clients > n:
        raise RecipeError([f"federated.clients: {n_clients} clients for {n} training rows leaves clients without "
                           f"data; use at most {n} clients"])
    if scheme == "iid":
        clients = np.array_split(rng.permutation(n), n_clients)
    elif scheme == "shards":
        if labels is None:
            raise DataError("shards:K needs class labels", where=where, hint="use iid or by:<column>")
        n_shards = n_clients * arg
        if n_shards > n:
            raise RecipeError([f"federated.partition: {spec} cuts {n} rows into {n_clients} x {arg} = {n_shards} "
                               f"shards, more than there are rows; use shards:{max(1, n // n_clients)} or fewer "
                               "clients"])
        # Sorted by label (ties in random order), cut into equal shards, K random shards per client.
        shuffled = rng.permutation(n)
        order = shuffled[np.argsort(labels[shuffled], kind="stable")]
        shards = np.array_split(order, n_shards)
        assignment = rng.permutation(n_shards).reshape(n_clients, arg)
        clients = [np.concatenate([shards[s] for s in row]) for row in assignment]
    elif scheme == "dirichlet":
        if labels is None:
            raise DataError("dirichlet:ALPHA needs class labels", where=where, hint="use iid or by:<column>")
        clients = _dirichlet(labels, n_clients, arg, rng, spec)
    else:
        if column is None:
            raise DataError(f"by:{arg} needs the column '{arg}'", where=where)
        clients = _by_column(column, n_clients, arg)
    clients = [np.sort(c.astype(np.int64)) for c in clients]
    empty = [i + 1 for i, c in enumerate(clients) if len(c) == 0]
    if empty:
        shown = ", ".join(str(i) for i in empty[:10]) + (", ..." if len(empty) > 10 else "")
        raise RecipeError([f"federated.partition: {spec} leaves {len(empty)} client(s) without data: client(s) "
                           f"{shown} of {n_clients}; use fewer clients or another partition"])
    classes = None
    if labels is not None:
        n_classes = int(labels.max()) + 1 if len(class_names or []) == 0 else len(class_names)
        classes = np.stack([np.bincount(labels[c], minlength=n_classes) for c in clients])
    names = list(class_names) if class_names else list(range(classes.shape[1])) if classes is not None else None
    return Partition(spec, clients, classes, names)


def _dirichlet(labels: np.ndarray, n_clients: int, alpha: float, rng, spec: str) -> list[np.ndarray]:
    """Per class, proportions over the clients drawn from Dirichlet(alpha); re-drawn while a client is empty."""
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for rows in by_class:
            share = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(share)[:-1] * len(rows)).astype(np.int64)
            for i, piece in enumerate(np.split(rows, cuts)):
                parts[i].append(piece)
        clients = [np.concatenate(p) for p in parts]
        if all(len(c) for c in clients):
            return clients
    empty = sum(1 for c in clients if not len(c))
    raise RecipeError([f"federated.partition: {spec} left {empty} of {n_clients} clients without data in each of "
                       f"{DIRICHLET_TRIES} draws; raise alpha (e.g. dirichlet:{alpha * 10:g}) or use fewer clients"])


def _by_column(column: np.ndarray, n_clients: int, name: str) -> list[np.ndarray]:
    """One client per value of the column (largest groups first onto the smallest client when values > clients)."""
    values = np.asarray(column).astype(str)
    keys, codes, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(keys) < n_clients:
        raise RecipeError([f"federated.partition: by:{name} has {len(keys)} distinct value(s) "
                           f"({', '.join(map(str, keys[:5]))}{', ...' if len(keys) > 5 else ''}), so {n_clients} "
                           f"clients would leave {n_clients - len(keys)} without data; set federated.clients: "
                           f"{len(keys)} (or --clients {len(keys)})"])
    owner = np.zeros(len(keys), dtype=np.int64)
    if len(keys) == n_clients:
        owner = np.arange(n_clients)
    else:
        load = np.zeros(n_clients, dtype=np.int64)
        for k in np.argsort(-counts, kind="stable"):  # at most #values iterations (not per row)
            owner[k] = int(np.argmin(load))
            load[owner[k]] += counts[k]
    row_owner = owner[codes]
    order = np.argsort(row_owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(row_owner, minlength=n_clients))[:-1])


def parse_client_slot(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3): this process is client 2 of 3 (1-based)."""
    try:
        k, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        k, n = 0, 0
    if n < 1 or not 1 <= k <= n:
        raise DlforgeError(f"'{text}' is not a client slot", where="--partition",
                           hint="write K/N with 1 <= K <= N, e.g. 1/3 (this process is client 1 of 3)")
    return k, n
