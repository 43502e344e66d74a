"""A GLoRA supernet trained by TRL's SFTTrainer on instruction data, searched by validation loss, kept as an adapter.

    python docs/examples/trl_sft.py --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --train-file train.jsonl \
        --validation-file val.jsonl --out runs/trl-sft

JSONL files of ``{"prompt": ..., "completion": ...}`` rows (TRL's prompt-completion format: the loss is on the
completion). The supernet adapts the attention's query and value projections; each step trains one random subnet
(the paper's uniform draw: distillation is for classification); ``glora_trainer`` mixes that into SFTTrainer, the
same way it would into any Trainer subclass.
"""

from __future__ import annotations

import argparse

import datasets
import torch
import transformers
from trl import SFTConfig, SFTTrainer

import glora
from glora.app.hf_trainer import glora_trainer, search_with_trainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a causal LM: a save_pretrained folder or a hub id")
    p.add_argument("--train-file", required=True)
    p.add_argument("--validation-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--max-params", type=int, default=None)
    p.add_argument("--generations", type=int, default=3)
    args = p.parse_args(argv)

    data = datasets.load_dataset("json", data_files={"train": args.train_file, "validation": args.validation_file})
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
    glora.inject(model, glora.SearchSpace(lora_ranks=(8, 4), bias_free="exclude"), ["q_proj", "v_proj"])

    config = SFTConfig(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=4, learning_rate=1e-3,
        save_strategy="epoch", report_to=[], seed=0, max_length=128, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    Trainer = glora_trainer(SFTTrainer)
    trainer = Trainer(model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"],
                      processing_class=tokenizer)  # fmt: skip
    trainer.train()

    model.eval()
    evolution = dict(population=8, parents=3, mutations=3, crossovers=3, generations=args.generations)
    result = search_with_trainer(trainer, max_params=args.max_params, metric="eval_loss", **evolution)
    print(f"pick: {result.params:,} params, eval loss {result.score:.4f} ({result.evaluated} candidates)")
    glora.save_adapter(model, f"{args.out}/adapter", result.subnet)


if __name__ == "__main__":
    main()
