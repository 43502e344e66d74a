"""A GLoRA supernet trained by transformers' own Trainer, searched with its evaluation loop, kept as an adapter.

    python docs/examples/hf_trainer.py --model prajjwal1/bert-tiny --train-file train.csv --validation-file dev.csv \
        --out runs/hf-trainer

CSV files with ``text`` and ``label`` columns (class names or indices). Every step trains a sandwich of subnets (the
largest, the smallest, one random) with in-place distillation; the Trainer saves a checkpoint (and the supernet as an
adapter folder) every epoch, so ``--resume`` continues an interrupted run; the search scores candidates with
``trainer.evaluate()``; the pick is saved as an adapter folder that ``glora.load_adapter`` puts onto the base.
"""

from __future__ import annotations

import argparse

import datasets
import transformers

import glora
from glora.app.hf_trainer import GLoRATrainer, search_with_trainer
from glora.app.sampling import Sampling


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a save_pretrained folder or a hub id")
    p.add_argument("--train-file", required=True)
    p.add_argument("--validation-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--max-params", type=int, default=None, help="the search's budget (the paper's count)")
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = p.parse_args(argv)

    data = datasets.load_dataset("csv", data_files={"train": args.train_file, "validation": args.validation_file})
    labels = sorted(set(data["train"]["label"]), key=str)
    index = {label: i for i, label in enumerate(labels)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)

    def encode(rows):
        return tokenizer(rows["text"], truncation=True, max_length=64) | {"labels": [index[v] for v in rows["label"]]}

    data = data.map(encode, batched=True, remove_columns=["text", "label"])
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(labels))
    glora.inject(model, glora.SearchSpace(lora_ranks=(8, 4)), ["query", "value"])  # the classifier trains in full

    training = transformers.TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=8, learning_rate=1e-3,
        save_strategy="epoch", eval_strategy="no", report_to=[], seed=0,
    )  # fmt: skip
    trainer = GLoRATrainer(
        model=model, args=training, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, sampling=Sampling("sandwich", sandwich_random=1, distill=True),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=True if args.resume else None)

    model.eval()
    evolution = dict(population=10, parents=3, mutations=4, crossovers=4, generations=args.generations)
    result = search_with_trainer(trainer, max_params=args.max_params, metric="eval_loss", **evolution)
    print(f"pick: {result.params:,} params, eval loss {result.score:.4f} ({result.evaluated} candidates)")
    glora.save_adapter(model, f"{args.out}/adapter", result.subnet)
    print(f"adapter: {args.out}/adapter (glora.load_adapter(base, ...) on the base model)")


if __name__ == "__main__":
    main()
