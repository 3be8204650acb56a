"""A recommender as a dlforge model: ids (+ side features) in, a score per (user, item) out.

`forward` keeps the contract of every dlforge model ({output: logits}), with three shapes:
  - training, implicit feedback: (B, 1 + k), the positive's score then its k sampled negatives' (the loss's);
  - a rating output: (B, 1), the predicted rating (standardised, as number targets are);
  - evaluation of an interaction output: (B, 2 + K): the pair's score, then the rank of the row's item among
    all items the user has not interacted with (0 = top), then the indices of the user's top K, so the metric
    set (evaluation/ranking.py) gets HR, NDCG, MRR and coverage from the usual logits -> metrics path, and
    validation, early stopping and `dlforge evaluate` need nothing new. Ranking all items is one matrix product.

What the model needs beside its weights is held in buffers, saved in model.safetensors with them: the seen
items of every user (CSR: `seen_indptr`, `seen_items`, and `seen_stages`, the split each pair is from: a row's ranking
leaves out the user's items of its own split and the earlier ones, never its own item; serving leaves out every
split's), training popularity (the popularity fallback and baseline), and one
catalogue per side feature (its value by id, to score every item or a user from their features). Loading
resizes these buffers to the stored shapes (`_load_from_state_dict`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlforge.models.combiners import combiners
from dlforge.models.negatives import NegativeSampler

TOP_K = 10  # the cutoff of the logged metrics (hr@10, ndcg@10, coverage@10): the papers' choice
RECALL_K = 50
CHUNK_PAIRS = 2_000_000
OPTIONAL_BUFFERS = ("seen_stages",)
SPLIT_STAGES = {"train": 0, "val": 1, "test": 2}  # any other part (a file given to evaluate) counts as after test
TRANSITION_SMOOTHING = 5.0
DENSE_TRANSITIONS_MAX = 4096  # up to this many items the transitions are also held dense (64 MB at most): fast rows  # added to each item's total of successor counts: a rare item's few counts weigh less  # NeuMF scores users x items through its MLP: this many pairs per chunk bounds memory


class ResizableBuffers(nn.Module):
    """Buffers whose shapes come from the data: loading takes the stored tensor's shape."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in OPTIONAL_BUFFERS:  # added later: a model saved before loads with it empty (and works as before)
            if name in self._buffers and prefix + name not in state_dict:
                state_dict[prefix + name] = torch.zeros(0, dtype=self._buffers[name].dtype)
        for name in list(self._buffers):
            key = prefix + name
            if key in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class OutputSlot(nn.Module):
    """What the rest of dlforge reads of a head: its config (loss weight) and a class weight slot (unused)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.class_weight = None

    def probabilities(self, logits):
        return logits


class RecommenderModel(nn.Module):
    def __init__(self, recipe, signature: dict):
        super().__init__()
        in_sig = signature["inputs"]
        self.user_input = next(f.name for f in recipe.inputs if f.type == "id" and f.role == "user")
        self.item_input = next(f.name for f in recipe.inputs if f.type == "id" and f.role == "item")
        self.n_users = in_sig[self.user_input]["cardinality"]
        self.n_items = in_sig[self.item_input]["cardinality"]
        side = {f.name: {**in_sig[f.name], "tower": f.tower} for f in recipe.inputs if f.type != "id"}
        self.user_side = [n for n, s in side.items() if s["tower"] == "user"]
        self.item_side = [n for n, s in side.items() if s["tower"] == "item"]
        output = recipe.outputs[0]
        self.output = output.name
        self.ranking = output.type == "interaction"
        self.loss_name = getattr(output, "loss", "mse")
        self.negatives = getattr(output, "negatives", 0)
        self.scorer = combiners.get(recipe.combiner.name)(recipe.combiner, n_users=self.n_users, n_items=self.n_items,
                                                          side=side)
        self.heads = nn.ModuleDict({output.name: OutputSlot(output)})
        self.tabular_names: list[str] = []
        self.encoders = nn.ModuleDict()  # none: the scorer embeds the ids (feature caching and unfreezing skip it)
        self.state = ResizableBuffers()
        self.state.register_buffer("seen_indptr", torch.zeros(self.n_users + 1, dtype=torch.long))
        self.state.register_buffer("seen_items", torch.zeros(0, dtype=torch.long))
        # the split each seen pair first occurs in (0 train, 1 val, 2 test): a val row's ranking leaves out the train
        # items only, a test row's train + val, as the protocol's README and RecBole do (the future is not known)
        self.state.register_buffer("seen_stages", torch.zeros(0, dtype=torch.int8))
        self.state.register_buffer("popularity", torch.zeros(self.n_items))
        self.catalogue_names = [*self.user_side, *self.item_side]
        for i in range(len(self.catalogue_names)):
            self.state.register_buffer(f"side_{i}", torch.zeros(0))
        self.history_length = getattr(recipe.combiner, "history", 0)
        if self.history_length:
            # Every user's interactions in time order (train rows by time, then val, then test: the split's
            # order), CSR, and the position of each (user, item) pair in it: a row's history is what precedes it.
            self.state.register_buffer("seq_indptr", torch.zeros(self.n_users + 1, dtype=torch.long))
            self.state.register_buffer("seq_items", torch.zeros(0, dtype=torch.long))
            self.state.register_buffer("seq_keys", torch.zeros(0, dtype=torch.long))
            self.state.register_buffer("seq_positions", torch.zeros(0, dtype=torch.long))
            if getattr(recipe.combiner, "history_ratings", False):
                self.state.register_buffer("seq_ratings", torch.zeros(0))
        self.transitions = getattr(recipe.combiner, "transitions", 0)
        if self.transitions:
            # Item -> next item counts of the train rows (sorted keys a * n_items + b, row-normalised values).
            self.transition_weight = float(recipe.combiner.transition_weight)
            self.transition_decay = float(recipe.combiner.transition_decay)
            self.state.register_buffer("trans_keys", torch.zeros(0, dtype=torch.long))
            self.state.register_buffer("trans_values", torch.zeros(0))
        self.sampler = (NegativeSampler(self.n_items, kind=output.sampler, alpha=output.popularity_alpha,
                                        seed=recipe.training.seed + 2) if self.ranking else None)
        self._log_q: torch.Tensor | None = None

    # ------------------------------------------------------------ data the model holds
    def attach(self, tensors: dict) -> None:
        """Seen items, popularity, side catalogues and the sampler's positives (data/interactions.py's tensors)."""
        users = torch.cat([u for u, _ in tensors["pairs"].values()])
        items = torch.cat([i for _, i in tensors["pairs"].values()])
        stages = torch.cat([torch.full((len(u),), SPLIT_STAGES.get(part, len(SPLIT_STAGES)), dtype=torch.long)
                            for part, (u, _) in tensors["pairs"].items()])
        known = (users > 0) & (items > 0)
        keys, inverse = torch.unique(users[known] * self.n_items + items[known], return_inverse=True)
        first = torch.full((len(keys),), len(SPLIT_STAGES), dtype=torch.long).scatter_reduce(0, inverse, stages[known],
                                                                                                "amin")
        self.state.seen_stages = first.to(torch.int8)
        seen_users, seen_items = torch.div(keys, self.n_items, rounding_mode="floor"), keys % self.n_items
        self.state.seen_indptr = torch.cat([torch.zeros(1, dtype=torch.long),
                                            torch.bincount(seen_users, minlength=self.n_users).cumsum(0)])
        self.state.seen_items = seen_items
        self.state.popularity = tensors["popularity"].float()
        for i, name in enumerate(self.catalogue_names):
            setattr(self.state, f"side_{i}", tensors["catalogues"][name])
        if self.history_length:
            self._attach_sequences(tensors["pairs"], tensors.get("ratings") or {})
        if self.transitions:
            self._attach_transitions(*tensors["pairs"]["train"])
        if self.sampler is not None:
            train_users, train_items = tensors["pairs"]["train"]
            self.sampler.set_data(train_users, train_items, tensors["popularity"])

    def _attach_sequences(self, pairs: dict, ratings: dict) -> None:
        parts = [p for p in ("train", "val", "test") if p in pairs]
        users = torch.cat([pairs[p][0] for p in parts])
        items = torch.cat([pairs[p][1] for p in parts])
        known = (users > 0) & (items > 0)
        users, items = users[known], items[known]
        order = torch.argsort(users, stable=True)  # rows keep their (time) order within a user
        users, items = users[order], items[order]
        if hasattr(self.state, "seq_ratings"):
            self.state.seq_ratings = torch.cat([ratings[p].reshape(-1) for p in parts])[known][order]
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(users, minlength=self.n_users).cumsum(0)])
        positions = torch.arange(len(users)) - indptr[users]
        keys, inverse = torch.unique(users * self.n_items + items, return_inverse=True)
        first = torch.full((len(keys),), len(users), dtype=torch.long).scatter_reduce(0, inverse, positions, "amin")
        self.state.seq_indptr, self.state.seq_items = indptr, items
        self.state.seq_keys, self.state.seq_positions = keys, first

    def _attach_transitions(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Count, over the train rows in time order, how often item b comes k = 1..`transitions` steps after item a
        in one user's sequence (weight decay^(k-1)), and divide each row a by its total + TRANSITION_SMOOTHING: a
        first-order Markov chain over items (Rendle et al. 2010's MC part, counted, not factorised). Train rows
        only, so neither a val nor a test item is ever counted as a successor."""
        known = (users > 0) & (items > 0)
        users, items = users[known], items[known]
        order = torch.argsort(users, stable=True)  # keeps each user's rows in time order
        users, items = users[order], items[order]
        keys, weights = [], []
        for k in range(1, self.transitions + 1):
            same = users[:-k] == users[k:]
            keys.append(items[:-k][same] * self.n_items + items[k:][same])
            weights.append(torch.full((int(same.sum()),), self.transition_decay ** (k - 1)))
        keys, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        counts = torch.zeros(len(keys)).index_add_(0, inverse, torch.cat(weights))
        source = torch.div(keys, self.n_items, rounding_mode="floor")
        totals = torch.zeros(self.n_items).index_add_(0, source, counts)
        self.state.trans_keys, self.state.trans_values = keys, counts / (totals[source] + TRANSITION_SMOOTHING)

    def transition_scores(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_items) sum over the row's history (most recent first, weight decay^p) of each history item's row of
        the transition matrix: how strongly the recent items lead to each item. All tensor ops."""
        history = self.history(x)
        keys, values = self.state.trans_keys, self.state.trans_values
        out = torch.zeros(len(history), self.n_items, device=history.device)
        if not len(keys):
            return out
        decay = self.transition_decay ** torch.arange(history.shape[1], device=history.device, dtype=torch.float32)
        if self.n_items <= DENSE_TRANSITIONS_MAX:  # a small catalogue: rows of the dense matrix (serving: ~10 rows)
            return torch.einsum("bl,bln->bn", decay * (history > 0), self._dense_transitions()[history])
        bounds = torch.searchsorted(keys, torch.arange(self.n_items + 1, device=keys.device) * self.n_items)
        flat = history.reshape(-1)
        start = bounds[flat]
        counts = torch.where(flat > 0, bounds[flat + 1] - start, torch.zeros_like(start))
        weight = decay.repeat(len(history))
        slot = torch.arange(len(flat), device=history.device).repeat_interleave(counts)
        offsets = torch.arange(int(counts.sum()), device=history.device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
        entry = start[slot] + offsets
        out.index_put_((torch.div(slot, history.shape[1], rounding_mode="floor"), keys[entry] % self.n_items),
                       values[entry] * weight[slot], accumulate=True)
        return out

    def _dense_transitions(self) -> torch.Tensor:
        """The transition matrix as an (n_items, n_items) tensor, built once from the keys (not saved: derived)."""
        keys = self.state.trans_keys
        tag = (keys.data_ptr(), len(keys), keys.device)
        if getattr(self, "_dense_tag", None) != tag:
            dense = torch.zeros(self.n_items * self.n_items, device=keys.device)
            dense[keys] = self.state.trans_values
            self._dense, self._dense_tag = dense.reshape(self.n_items, self.n_items), tag
        return self._dense

    def history(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, history) each row's user's items before the row's own item (its first interaction with it), the
        most recent first, 0-padded; without an item (serving) every interaction the user has; a row whose item is
        unknown gets none. So a training row sees the earlier training rows, a val row all of train, a test row
        train + val, never its own item."""
        index, valid = self._history_index(x)
        if not len(self.state.seq_items):
            return torch.zeros(valid.shape, dtype=torch.long, device=valid.device)
        return torch.where(valid, self.state.seq_items[index], 0)

    def history_ratings(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, history) the (standardised) ratings of `history(x)`'s items, 0 where there is none."""
        index, valid = self._history_index(x)
        if not len(self.state.seq_ratings):
            return torch.zeros(valid.shape, device=valid.device)
        return torch.where(valid, self.state.seq_ratings[index], 0.0)

    def _history_index(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, history) positions in the sequence buffers (clamped to 0 where invalid) and where they are valid."""
        users = x[self.user_input]
        start = self.state.seq_indptr[users]
        position = self.state.seq_indptr[users + 1] - start
        items, keys = x.get(self.item_input), self.state.seq_keys
        if items is not None and len(keys):
            wanted = users * self.n_items + items.reshape(-1)
            at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
            found = (keys[at] == wanted) & (items.reshape(-1) > 0)
            # A row whose item is unknown (index 0, or a pair not in the data) cannot be placed in time: no history,
            # so that nothing later than the row can leak into it.
            position = torch.where(found, self.state.seq_positions[at], torch.zeros_like(position))
        back = torch.arange(self.history_length, device=users.device)
        index = (start + position).unsqueeze(1) - 1 - back
        valid = index >= start.unsqueeze(1)
        return index.clamp(min=0), valid

    def catalogue(self, name: str) -> torch.Tensor:
        return getattr(self.state, f"side_{self.catalogue_names.index(name)}")

    def seen_mask(self, users: torch.Tensor) -> torch.Tensor:
        """(B, n_items) True where the user has interacted with the item (any split), built from the CSR."""
        indptr, items = self.state.seen_indptr, self.state.seen_items
        start, end = indptr[users], indptr[users + 1]
        counts = end - start
        rows = torch.arange(len(users), device=users.device).repeat_interleave(counts)
        offsets = torch.arange(int(counts.sum()), device=users.device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
        mask = torch.zeros(len(users), self.n_items, dtype=torch.bool, device=users.device)
        mask[rows, items[start.repeat_interleave(counts) + offsets]] = True
        return mask

    def seen_before(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, n_items) True where the user interacted with the item in the row's own split or an earlier one (a val
        row: train and val; a test row: train, val and test), never the row's own item: what its ranking leaves
        out. A pair not in the data (or a model saved without the splits) leaves out every seen item."""
        mask = self.seen_mask(users)
        if len(self.state.seen_stages) != len(self.state.seen_items):
            return mask
        indptr, stages = self.state.seen_indptr, self.state.seen_stages
        start, end = indptr[users], indptr[users + 1]
        counts = end - start
        rows = torch.arange(len(users), device=users.device).repeat_interleave(counts)
        offsets = torch.arange(int(counts.sum()), device=users.device) - (counts.cumsum(0) - counts).repeat_interleave(counts)
        entries = start.repeat_interleave(counts) + offsets
        stage = torch.full((len(users), self.n_items), -1, dtype=torch.int8, device=users.device)
        stage[rows, self.state.seen_items[entries]] = stages[entries]
        own = stage[torch.arange(len(users), device=users.device), items].long()
        own = torch.where(own < 0, torch.full_like(own, len(SPLIT_STAGES)), own)
        mask = mask & (stage.long() <= own.unsqueeze(1))
        mask[torch.arange(len(users), device=users.device), items] = False
        return mask

    # ------------------------------------------------------------ encodings
    def user_encoding(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        history = self.history(x) if self.history_length else None
        return self.scorer.encode_users(x[self.user_input], {n: x[n] for n in self.user_side}, history)

    def item_encoding(self, items: torch.Tensor, x: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Items' encodings; side features from `x` (the rows' own) when given, else from the catalogue."""
        side = {n: (x[n] if x is not None else self.catalogue(n)[items]) for n in self.item_side}
        return self.scorer.encode_items(items, side)

    def score_items(self, x: dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """(B, m) scores of each row's user with `items` (B, m), item features from the catalogue."""
        u = self.user_encoding(x).unsqueeze(1)
        scores = self.scorer.interact(u, self.item_encoding(items)) + self.scorer.biases(x[self.user_input], items)
        if self.transitions and not self.training:
            scores = scores + self.transition_weight * self.transition_scores(x).gather(1, items)
        return scores

    def score_all(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_items) scores of each row's user with every item: one matrix product for dot-product scorers."""
        users = x[self.user_input]
        every = torch.arange(self.n_items, device=users.device)
        u, v = self.user_encoding(x), self.item_encoding(every)
        bias = self.scorer.all_biases(users, self.n_items)
        if self.transitions and not self.training:  # a fixed term: added to the trained scores, never trained
            bias = bias + self.transition_weight * self.transition_scores(x)
        if self.scorer.dot_product:
            return u @ v.T + bias
        step = max(1, CHUNK_PAIRS // self.n_items)
        return torch.cat([self.scorer.interact(u[i:i + step].unsqueeze(1), v.unsqueeze(0))
                          for i in range(0, len(u), step)]) + bias

    def rank(self, x: dict[str, torch.Tensor], k: int = max(TOP_K, RECALL_K)) -> tuple[torch.Tensor, torch.Tensor]:
        """(rank of each row's item among the items the user had not interacted with by the row's split, 0 = first;
        top-k item indices). The row's own item is never masked; an unknown item (index 0) ranks last (a miss)."""
        users, items = x[self.user_input], x[self.item_input]
        scores = self.score_all(x).float()
        mask = self.seen_before(users, items)
        rows = torch.arange(len(users), device=users.device)
        mask[:, 0] = True
        own = scores[rows, items]
        scores = scores.masked_fill(mask, -math.inf)
        rank = (scores > own.unsqueeze(1)).sum(1).float()
        rank = torch.where(items == 0, torch.full_like(rank, self.n_items), rank)
        return rank, scores.topk(min(k, self.n_items), dim=1).indices.float()

    # ------------------------------------------------------------ the dlforge model contract
    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        users, items = x[self.user_input], x[self.item_input]
        if self.training and self.ranking and self.loss_name == "full_softmax":
            # Every item is a class: the positive first, then the whole catalogue with the positive and the unknown
            # item masked out, so the positive is class 0 as in the sampled losses.
            scores = self.score_all(x)
            rows = torch.arange(len(users), device=users.device)
            own = scores[rows, items]
            scores = scores.index_fill(1, torch.zeros(1, dtype=torch.long, device=users.device), -math.inf)
            scores[rows, items] = -math.inf
            return {self.output: torch.cat([own.unsqueeze(1), scores], 1)}
        if self.training and self.ranking:
            negatives = self.sampler.sample(users, self.negatives)
            candidates = torch.cat([items.unsqueeze(1), negatives], 1)
            self._log_q = self.sampler.log_q(candidates) if self.loss_name == "softmax" else None
            return {self.output: self.score_items(x, candidates)}
        u = self.user_encoding(x)
        score = (self.scorer.interact(u, self.item_encoding(items, x))
                 + self.scorer.biases(users, items.unsqueeze(1)).squeeze(1))
        if hasattr(self.state, "seq_ratings") and not self.ranking:
            history = self.history(x)
            score = score + self.scorer.recent_deviation(users, history, self.history_ratings(x))
        if self.transitions and not self.training:
            score = score + self.transition_weight * self.transition_scores(x).gather(1, items.unsqueeze(1)).squeeze(1)
        score = score.unsqueeze(1)
        if self.training or not self.ranking:
            return {self.output: score}
        rank, top = self.rank(x)
        return {self.output: torch.cat([score, rank.unsqueeze(1), top], 1)}

    def loss(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        out = logits[self.output].float()
        penalty = self.scorer.penalty() if self.training else None
        if not self.ranking:
            loss = F.mse_loss(out.squeeze(-1), targets[self.output].float())
        elif not self.training or out.shape[1] != self._training_width():
            # Evaluation: the share of unseen items ranked above the held-out one (1 - AUC).
            loss = (out[:, 1] / max(self.n_items - 2, 1)).clamp(max=1).mean()
        elif self.loss_name == "bpr":
            loss = -F.logsigmoid(out[:, :1] - out[:, 1:]).mean()
        elif self.loss_name == "bce":
            labels = torch.zeros_like(out)
            labels[:, 0] = 1
            loss = F.binary_cross_entropy_with_logits(out, labels)
        else:  # full softmax, or sampled softmax with the logQ correction: the positive is class 0
            corrected = out - self._log_q if self._log_q is not None and self.loss_name == "softmax" else out
            loss = F.cross_entropy(corrected, torch.zeros(len(out), dtype=torch.long, device=out.device))
        return loss + penalty if penalty is not None else loss

    def _training_width(self) -> int:
        """Columns of a training forward: the positive and its negatives (every item for full_softmax)."""
        return 1 + (self.n_items if self.loss_name == "full_softmax" else self.negatives)

    def architectures(self) -> dict:
        return {}

    def length_sensitive_inputs(self) -> dict:
        return {}

    # ------------------------------------------------------------ exact resume
    def rng_state(self) -> torch.Tensor | None:
        return self.sampler.rng_state() if self.sampler is not None else None

    def load_rng_state(self, state: torch.Tensor) -> None:
        if self.sampler is not None:
            self.sampler.load_rng_state(state)


__all__ = ["RECALL_K", "RecommenderModel", "TOP_K"]
