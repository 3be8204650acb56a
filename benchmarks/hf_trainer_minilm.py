"""MiniLM fine-tuning: dlforge vs Hugging Face `Trainer` on the same model, data, batch, epochs and rates.

Both fine-tune all-MiniLM-L6-v2 end to end with mean pooling and a linear head, AdamW at one rate,
linear warm-up-free constant schedule, batch 32, texts cut at 64 WordPiece tokens, on the same
training rows of rt_snippets; both are scored on the same official test split. The HF side gets
the token ids dlforge produced (same tokenizer, same truncation) and dynamic padding per batch, as
its own DataCollatorWithPadding would give. Time is training only (HF: trainer.train(); dlforge:
Trainer.fit(), which includes its end-of-epoch checkpoint, ~260 MB here; HF saves nothing).

Five runs, one process, one after the other: each side with its default batching (dlforge: `sampling:
auto`, which groups rows by token length for minilm; HF: random); dlforge `sampling: random` against HF
fed exactly the same batches in the same order (a sequential sampler over dlforge's permutation: equal
work, so the ratio is the trainers' own overhead); and HF's `train_sampling_strategy="group_by_length"`. Both sides use fused AdamW (HF's default `adamw_torch_fused`; dlforge's
optimizer registry picks fused where torch has it); HF also clips gradients at 1.0 (its default).

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/hf_trainer_minilm.py --rows 1600 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from dlforge.data import prepare
from dlforge.models import build_model
from dlforge.recipe.io import load_recipe
from dlforge.training import Trainer


def recipe(rows: int, epochs: int, lr: float, sampling: str = "auto"):
    return load_recipe({"name": "bench-hf", "data": {"source": "builtin:rt_snippets", "split": {"val": 0.0, "test": "official"}},
                        "inputs": [{"name": "text", "type": "text", "preprocessing": {"max_length": 64},
                                    "encoder": {"name": "minilm", "freeze": "none"}}],
                        "outputs": [{"name": "label", "type": "binary"}],
                        "training": {"epochs": epochs, "batch_size": 32, "seed": 0, "sampling": sampling,
                                     "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.0}}})


class MeanPoolClassifier(nn.Module):
    """The same network dlforge builds, as a plain HF-style module returning {'loss', 'logits'}."""

    def __init__(self):
        super().__init__()
        from dlforge.models.encoders.minilm import load_minilm

        self.bert = load_minilm(True, where="benchmark")
        self.head = nn.Linear(384, 1)

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        logits = self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)).squeeze(-1)
        loss = None if labels is None else nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return {"loss": loss, "logits": logits}


class IdsDataset(torch.utils.data.Dataset):
    def __init__(self, ids, labels):
        self.ids, self.labels = ids, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        row = self.ids[i]
        return {"input_ids": row[row != 0], "labels": self.labels[i]}


def collate(items):
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, :len(it["input_ids"])] = it["input_ids"]
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.stack([it["labels"] for it in items])}


def hf_run(train, test, epochs: int, lr: float, sampling: str = "random") -> tuple[float, float]:
    from transformers import Trainer as HFTrainer, TrainingArguments

    torch.manual_seed(0)
    model = MeanPoolClassifier()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=32, num_train_epochs=epochs,
                                 learning_rate=lr, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                                 logging_strategy="no", save_strategy="no", report_to=[], seed=0,
                                 dataloader_num_workers=0, use_cpu=True, disable_tqdm=True,
                                 train_sampling_strategy=sampling)
        trainer = HFTrainer(model=model, args=args, train_dataset=IdsDataset(*train), data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model.eval()
    ids, labels = test
    correct = 0
    with torch.no_grad():
        for s in range(0, len(ids), 256):
            batch = collate([{"input_ids": r[r != 0], "labels": y} for r, y in zip(ids[s:s + 256], labels[s:s + 256])])
            correct += int(((model(batch["input_ids"], batch["attention_mask"])["logits"] > 0).float() == batch["labels"]).sum())
    return seconds, correct / len(ids)


def dlforge_run(r, prepared, train_split) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(r, prepared.signature())
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(r, model, train_split, None, prepared.signature(), run_dir=Path(tmp), progress=False)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        accuracy = trainer.evaluate(prepared.splits["test"])["accuracy"]
    return seconds, accuracy


def dlforge_order(lengths: torch.Tensor, epochs: int, seed: int, grouped: bool) -> torch.Tensor:
    """The training rows in the order dlforge's trainer visits them, all epochs one after another."""
    from dlforge.data.batches import InMemoryBatches

    batches = InMemoryBatches(len(lengths), 32, seed=seed + 1, lengths=lengths if grouped else None)
    return torch.cat([batches.permutation() for _ in range(epochs)])


def padded_tokens(batches) -> int:
    """Tokens a trimmed batch runs over (batch rows x longest row), summed: the compute each batching costs."""
    return sum(len(b) * int(b.max()) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hf-first", action="store_true", help="Run HF first (load drifts: run both orders).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = recipe(args.rows, args.epochs, args.lr)
    prepared = prepare(r)
    from dlforge.data.prepare import Encoded

    full = prepared.splits["train"]
    train_split = Encoded({k: v[:args.rows] for k, v in full.x.items()}, {k: v[:args.rows] for k, v in full.y.items()})
    test = prepared.splits["test"]
    hf_data = (train_split.x["text"].clone(), train_split.y["label"].float().view(-1).clone())
    hf_test = (test.x["text"], test.y["label"].float().view(-1))

    def fresh_split():  # the trainer moves tensors in place; each run gets its own view
        return Encoded(dict(train_split.x), dict(train_split.y))

    runs = {
        "dlforge (sampling auto = by_length)": lambda: dlforge_run(r, prepared, fresh_split()),
        "hf (random, its default)": lambda: hf_run(hf_data, hf_test, args.epochs, args.lr),
        "dlforge (sampling random)": lambda: dlforge_run(recipe(args.rows, args.epochs, args.lr, "random"), prepared,
                                                         fresh_split()),
        # One pass over the rows in dlforge's random order: the same batches as the run above (constant rate).
        "hf (dlforge's random batches)": lambda: hf_run((hf_data[0][same], hf_data[1][same]), hf_test, 1, args.lr,
                                                        "sequential"),
        "hf (group_by_length)": lambda: hf_run(hf_data, hf_test, args.epochs, args.lr, "group_by_length"),
    }
    lengths = (hf_data[0] != 0).sum(1)
    same = dlforge_order(lengths, args.epochs, seed=0, grouped=False)
    order = list(runs)
    if args.hf_first:
        order = [order[1], order[0], order[3], order[2], order[4]]
    results = {}
    for name in order:
        seconds, accuracy = runs[name]()
        results[name] = {"seconds": round(seconds, 1), "test_accuracy": round(accuracy, 4)}
        print(name, results[name], flush=True)
    from dlforge.data.batches import InMemoryBatches

    grouped = InMemoryBatches(len(lengths), 32, seed=1, lengths=lengths)
    plain = InMemoryBatches(len(lengths), 32, seed=1)
    ours, theirs = results["dlforge (sampling auto = by_length)"], results["hf (random, its default)"]
    print(json.dumps({"rows": args.rows, "epochs": args.epochs, "batch": 32, "max_length": 64, "lr": args.lr,
                      "threads": args.threads, "order": order, "runs": results,
                      "ratio_defaults": round(ours["seconds"] / theirs["seconds"], 3),
                      "ratio_random": round(results["dlforge (sampling random)"]["seconds"] / theirs["seconds"], 3),
                      "ratio_same_batches": round(results["dlforge (sampling random)"]["seconds"]
                                                  / results["hf (dlforge's random batches)"]["seconds"], 3),
                      "ratio_by_length": round(ours["seconds"] / results["hf (group_by_length)"]["seconds"], 3),
                      "padded_tokens_per_epoch": {
                          "random": padded_tokens([lengths[i] for i in plain.slices(plain.permutation())]),
                          "by_length": padded_tokens([lengths[i] for i in grouped.slices(grouped.permutation())]),
                          "real": int(lengths.sum())},
                      "test_rows": len(hf_test[0])}))


if __name__ == "__main__":
    main()
