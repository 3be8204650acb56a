"""MiniLM fine-tuning: dlforge vs Hugging Face `Trainer` on the same model, data, batch, epochs and rates.

Both fine-tune all-MiniLM-L6-v2 end to end with mean pooling and a linear head, AdamW at one rate,
linear warm-up-free constant schedule, batch 32, texts cut at 64 WordPiece tokens, on the same
training rows of rt_snippets; both are scored on the same official test split. The HF side gets
the token ids dlforge produced (same tokenizer, same truncation) and dynamic padding per batch, as
its own DataCollatorWithPadding would give. Time is training only (HF: trainer.train()).

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/hf_trainer_minilm.py --rows 2000 --epochs 1
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
from dlforge.recipe_io import load_recipe
from dlforge.train import Trainer


def recipe(rows: int, epochs: int, lr: float):
    return load_recipe({"name": "bench-hf", "data": {"source": "builtin:rt_snippets", "split": {"val": 0.0, "test": "official"}},
                        "inputs": [{"name": "text", "type": "text", "preprocessing": {"max_length": 64},
                                    "encoder": {"name": "minilm", "freeze": "none"}}],
                        "outputs": [{"name": "label", "type": "binary"}],
                        "training": {"epochs": epochs, "batch_size": 32, "seed": 0,
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


def hf_run(train, test, epochs: int, lr: float) -> tuple[float, float]:
    from transformers import Trainer as HFTrainer, TrainingArguments

    torch.manual_seed(0)
    model = MeanPoolClassifier()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=32, num_train_epochs=epochs,
                                 learning_rate=lr, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                                 logging_strategy="no", save_strategy="no", report_to=[], seed=0,
                                 dataloader_num_workers=0, use_cpu=True, disable_tqdm=True)
        trainer = HFTrainer(model=model, args=args, train_dataset=IdsDataset(*train), data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model.eval()
    ids, labels = test
    correct = 0
    with torch.no_grad():
        for s in range(0, len(ids), 256):
            batch = collate([{"input_ids": r[r != 0], "labels": l} for r, l in zip(ids[s:s + 256], labels[s:s + 256])])
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
    if args.hf_first:
        hf_s, hf_acc = hf_run(hf_data, hf_test, args.epochs, args.lr)
        ours_s, ours_acc = dlforge_run(r, prepared, train_split)
    else:
        ours_s, ours_acc = dlforge_run(r, prepared, train_split)
        hf_s, hf_acc = hf_run(hf_data, hf_test, args.epochs, args.lr)
    print(json.dumps({"rows": args.rows, "epochs": args.epochs, "batch": 32, "max_length": 64, "lr": args.lr,
                      "dlforge_s": round(ours_s, 1), "hf_trainer_s": round(hf_s, 1), "ratio": round(ours_s / hf_s, 3),
                      "dlforge_test_accuracy": round(ours_acc, 4), "hf_test_accuracy": round(hf_acc, 4),
                      "test_rows": len(hf_test[0]), "order": "hf first" if args.hf_first else "dlforge first"}))


if __name__ == "__main__":
    main()
