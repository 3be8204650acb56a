"""Negative sampling for implicit feedback: k items per positive, never one of the user's training items.

Draws are whole-batch tensor ops: candidates for all B*k slots at once, membership tested by `searchsorted`
on the sorted (user * n_items + item) keys of the training interactions, and only the slots that hit a
positive redrawn. Rounds without a host sync come first (MovieLens' heaviest user has 40% of the catalogue, so
4 rounds leave 0.4^4 = 2.6% of that user's slots); a final loop redraws until none is left, one host sync per
round (usually none or one). Item 0 (the unknown bucket) is never drawn.

`uniform` draws from items 1..n-1; `popularity` from count ** alpha (word2vec's smoothing), so popular items
are harder negatives; `log_q` gives each item's log sampling probability for the logQ correction of a sampled
softmax (Yi et al. 2019). The generator is the sampler's own (seeded from the recipe), and its state is part of
the trainer's checkpoint (`rng_state`), so a resumed run draws exactly the negatives the uninterrupted one drew.
"""

from __future__ import annotations

import torch
from torch import nn

SYNC_FREE_ROUNDS = 4
MAX_ROUNDS = 1000  # far beyond need: a user with one item left unseen takes ~n_items rounds for that slot


class NegativeSampler(nn.Module):
    """`sample(users, k)` -> (B, k) item indices that are not the users' training items."""

    def __init__(self, n_items: int, *, kind: str = "uniform", alpha: float = 0.75, seed: int = 0):
        super().__init__()
        self.n_items, self.kind, self.alpha = n_items, kind, alpha
        # Plain attributes, not buffers: they stay on the CPU with the generator wherever the model moves.
        self.keys = torch.zeros(0, dtype=torch.long)
        self.probs = torch.zeros(n_items)
        self.generator = torch.Generator().manual_seed(seed)

    def set_data(self, users: torch.Tensor, items: torch.Tensor, popularity: torch.Tensor) -> None:
        """The training interactions (index pairs) and item counts. Refuses a user who has every item."""
        from dlforge.core.errors import ModelError

        keys = torch.unique(users.long() * self.n_items + items.long())  # sorted
        per_user = torch.bincount(torch.div(keys, self.n_items, rounding_mode="floor"))
        if len(per_user) and int(per_user.max()) >= self.n_items - 1:
            raise ModelError("a user has interacted with every item: no negative can be sampled for them",
                             hint="drop that user, or train on explicit ratings (a number output)")
        self.keys = keys
        if self.kind == "popularity":
            probs = popularity.float().clamp(min=0).pow(self.alpha)
        else:
            probs = torch.ones(self.n_items)
        probs[0] = 0.0
        if float(probs.sum()) <= 0:
            probs = torch.ones(self.n_items)
            probs[0] = 0.0
        self.probs = probs / probs.sum()

    def _draw(self, n: int) -> torch.Tensor:
        if self.kind == "popularity":
            return torch.multinomial(self.probs, n, replacement=True, generator=self.generator)
        return torch.randint(1, self.n_items, (n,), generator=self.generator)

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """True where (user, item) is a training interaction (elementwise, any shape)."""
        if len(self.keys) == 0:
            return torch.zeros(items.shape, dtype=torch.bool)
        keys = users * self.n_items + items
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return self.keys[at] == keys

    def sample(self, users: torch.Tensor, k: int) -> torch.Tensor:
        device, users = users.device, users.long().cpu()
        slots = users.repeat_interleave(k)
        items = self._draw(len(slots))
        for _ in range(SYNC_FREE_ROUNDS):
            items = torch.where(self.is_positive(slots, items), self._draw(len(slots)), items)
        for _ in range(MAX_ROUNDS):
            bad = self.is_positive(slots, items)
            if not bool(bad.any()):
                return items.view(len(users), k).to(device)
            items[bad] = self._draw(int(bad.sum()))
        from dlforge.core.errors import ModelError

        raise ModelError(f"no negative found in {MAX_ROUNDS} draws for some users (they interacted with almost "
                         "every item the sampler can draw)", hint="use sampler: uniform, or drop those users")

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        """log of each item's sampling probability (the logQ correction)."""
        return torch.log(self.probs[items.cpu()].clamp(min=1e-12)).to(items.device)

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
