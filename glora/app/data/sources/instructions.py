"""``instructions``: causal-LM fine-tuning data (instruction / response pairs) from the same files as ``text``.

Two row forms, told apart by their columns:

- Alpaca rows: ``instruction``, an optional ``input`` and ``output``, rendered with the Alpaca prompt (the template
  the LLM-Adapters / LoReFT commonsense setup, and so GIFT's, trains and evaluates with);
- chat rows: ``messages``, a list of ``{"role", "content"}`` turns ending with the assistant's, rendered by the
  tokenizer's own chat template (``apply_chat_template``).

The loss is on the response tokens only (the output, or the last assistant turn) and the eos token after them;
prompt tokens and padding get the label ``-100``. A split is kept as ``input_ids`` and ``attention_mask`` (N, L),
right-padded to ``--max-seq-length``, with the targets ``labels`` (N, L: the token labels), ``choice_group`` and
``choice_correct`` (the row's multiple-choice question, -1 for plain rows, and whether it is the correct option; see
:mod:`glora.app.tasks`). Rows cut so far that no response token is left are dropped (logged).

Multiple choice (validation and test splits): a row with ``options`` (candidate responses) and ``answer`` (the
correct one, or its index), or an LLM-Adapters Commonsense170k row (an ``answer`` such as ``option2`` that its
``output`` contains, and ``Answer format: option1/option2`` in the instruction), becomes one sequence per option;
the option with the highest log-likelihood (summed over its tokens, lm-eval's ``acc``) is the model's choice, and
``mc_accuracy`` counts the rows where it is the answer. The loss metrics of such a split are those of the correct
options. The training split always trains on the answer (the ``output``).

``--packing`` (training split only) concatenates the examples, each ending in eos, into rows of exactly
``--max-seq-length`` tokens with no padding; attention then crosses example boundaries, as in the common packed
training of instruction data.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass

import torch

from ...tasks import IGNORE_INDEX
from ..batch import TextModality
from ..sequences import TextSet
from . import Source, register_source
from .options import TextFileOptions, option
from .text import load_tokenizer, read_table, split_file

__all__ = ["InstructionSource", "InstructionOptions", "ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "Row", "render_rows"]

_logger = logging.getLogger(__name__)

# The Alpaca data format's prompt (with and without an input); the response follows "### Response:\n".
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class Row:
    """One example: the prompt, the response trained on, and for multiple choice the options and the answer's
    index among them."""

    prompt: str
    response: str
    options: list[str] | None = None
    answer: int | None = None


_ANSWER_FORMAT = re.compile(r"Answer format:\s*([^\n]+)")


def render_rows(table, path: str, tokenizer) -> list[Row]:
    """The rows of a file as prompt, response (and options), from Alpaca or chat rows; ``ValueError`` names the file
    and row."""
    columns = set(table.column_names)
    if "messages" in columns:
        return [Row(*_chat(row, i, path, tokenizer)) for i, row in enumerate(table["messages"])]
    if "instruction" in columns and ("output" in columns or "options" in columns):
        n = len(table)
        get = {c: table[c] if c in columns else [None] * n for c in ("input", "output", "options", "answer")}
        rows = []
        for i, instruction in enumerate(table["instruction"]):
            where = f"{path}: row {i + 1}"
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError(f"{where} has an empty 'instruction'")
            extra = get["input"][i]
            if extra is not None and not isinstance(extra, str):
                raise ValueError(f"{where}: 'input' must be text, got {type(extra).__name__}")
            prompt = (
                ALPACA_PROMPT.format(instruction=instruction, input=extra)
                if extra and extra.strip()
                else ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
            )
            options, answer = _options(instruction, get["output"][i], get["options"][i], get["answer"][i], where)
            output = get["output"][i] if get["output"][i] is not None else options[answer] if options else None
            if not isinstance(output, str) or not output.strip():
                raise ValueError(f"{where} has an empty 'output'")
            rows.append(Row(prompt, output, options, answer))
        return rows
    raise ValueError(
        f"{path}: instruction data needs the columns instruction + output (+ input, options, answer), or messages "
        f"(chat turns); found {', '.join(sorted(columns))}"
    )


def _options(instruction: str, output, options, answer, where: str) -> tuple[list[str] | None, int | None]:
    """A row's candidate responses and the answer's index, or (None, None) for a plain row."""
    if options is not None:
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
            raise ValueError(f"{where}: 'options' must be a list of at least two non-empty texts")
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
            return options, answer
        if isinstance(answer, str) and answer in options:
            return options, options.index(answer)
        raise ValueError(
            f"{where}: 'answer' {answer!r} is neither one of the options nor an index 0..{len(options) - 1}"
        )
    if isinstance(answer, str) and answer and isinstance(output, str) and answer in output:
        found = _ANSWER_FORMAT.search(instruction)
        choices = [c.strip() for c in found.group(1).split("/") if c.strip()] if found else []
        if answer in choices and len(choices) > 1:  # Commonsense170k: "the correct answer is option2"
            return [output.replace(answer, c) for c in choices], choices.index(answer)
    return None, None


def _chat(messages, i: int, path: str, tokenizer) -> tuple[str, str]:
    where = f"{path}: row {i + 1}"
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} turns")
    for turn in messages:
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
            raise ValueError(f"{where}: every turn needs a 'role' and a 'content'; got {turn!r:.80}")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last turn is {messages[-1]['role']!r}; it must be the assistant's response")
    if not isinstance(messages[-1]["content"], str) or not messages[-1]["content"].strip():
        raise ValueError(f"{where}: the assistant's last turn is empty; it is the response the model learns")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{where}: chat rows need a tokenizer with a chat template; this one has none (use Alpaca rows: "
            "instruction, input, output)"
        )
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(f"{where}: the chat template does not render the conversation as prompt + response")
    return prompt, full[len(prompt) :]


def _encode(tokenizer, prompts: list[str], responses: list[str], chat: bool) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per (prompt, response): the prompt masked, the response (and eos) scored.

    The text is tokenized whole, as generation will see it, and split where the prompt's own tokens end (the
    Alpaca / LLM-Adapters recipe, and lm-eval's context/continuation split): a SentencePiece tokenizer gives the
    first response word another token after a newline than at the start of a text of its own."""
    special = not chat  # a chat template writes its own special tokens
    prompt_ids = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    whole_ids = tokenizer([p + r for p, r in zip(prompts, responses)], add_special_tokens=special)["input_ids"]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    out = []
    for p, w in zip(prompt_ids, whole_ids):
        n = 0  # the shared prefix (a tokenizer that appends a special token to the prompt alone stops it early)
        while n < min(len(p), len(w)) and p[n] == w[n]:
            n += 1
        tail = w[n:] + (eos if w[-1:] != eos else [])
        out.append((w[:n] + tail, [IGNORE_INDEX] * n + tail))
    return out


def _sequences(rows: list[Row], choice: bool) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """Prompts, responses and (group, correct) per sequence: a multiple-choice row (with ``choice``) is one sequence
    per option in group ``i``; every other row one sequence in group -1."""
    prompts, responses, meta = [], [], []
    for i, row in enumerate(rows):
        if choice and row.options:
            for k, option in enumerate(row.options):
                prompts.append(row.prompt)
                responses.append(option)
                meta.append((i, int(k == row.answer)))
        else:
            prompts.append(row.prompt)
            responses.append(row.response)
            meta.append((-1, 1))
    return prompts, responses, meta


@dataclass
class InstructionOptions(TextFileOptions):
    """Instruction data for a causal LM."""

    packing: bool = option(
        False,
        "pack the training examples end to end into full --max-seq-length rows (no padding)",
        action=argparse.BooleanOptionalAction,
    )


@register_source
class InstructionSource(Source):
    name = "instructions"
    order = 5
    needs_root = False
    files = False
    modality = TextModality
    task_type = "causal-lm"
    Options = InstructionOptions

    def check(self, spec) -> None:
        if not spec.train_file:
            raise ValueError(
                "dataset instructions needs --train-file (CSV, TSV, JSON, JSONL, parquet or a save_to_disk folder "
                "with instruction/input/output or messages rows)"
            )
        if spec.max_seq_length < 2:
            raise ValueError(f"--max-seq-length must be at least 2, got {spec.max_seq_length}")

    def task_kind(self, spec) -> str:
        return "causal-lm"

    def split_name(self, spec, role: str) -> str:
        return role  # split_file maps it to --train-file etc.

    def split_key(self, spec, split: str) -> str:
        return split_file(spec, split)

    def preflight(self, spec, split: str) -> None:
        path = self.split_key(spec, split)
        table = read_table(path)
        if len(table) == 0:
            raise ValueError(f"{path}: no rows")
        tok = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
        render_rows(table, path, tok)

    def load(self, spec, split, progress) -> TextSet:
        path = self.split_key(spec, split)
        table = read_table(path)
        if len(table) == 0:
            raise ValueError(f"{path}: no rows")
        if not spec.tokenizer:
            raise ValueError("dataset instructions needs the model's tokenizer (--tokenizer, default: the --model)")
        tok = load_tokenizer(spec.tokenizer)
        chat = "messages" in table.column_names
        rows = render_rows(table, path, tok)
        training = split == "train"
        prompts, responses, meta = _sequences(rows, choice=not training)
        encoded = _encode(tok, prompts, responses, chat)
        groups = sum(1 for r in rows if r.options) if not training else 0
        if groups:
            _logger.info("%s: %d of %d rows are multiple choice (%d option sequences)", path, groups, len(rows),
                         sum(len(r.options) for r in rows if r.options))  # fmt: skip
        length = spec.max_seq_length
        if spec.packing and training:
            ids, labels = _pack(encoded, length, path)
            mask = torch.ones_like(ids)
            meta = [(-1, 1)] * len(ids)
        else:
            kept = [(i[:length], lab[:length]) for i, lab in encoded]
            scored = [any(v != IGNORE_INDEX for v in lab[1:]) for _, lab in kept]
            if groups:  # a question stays whole: all of its options, or none
                lost = {g for (g, _), ok in zip(meta, scored) if g >= 0 and not ok}
                scored = [ok and g not in lost for (g, _), ok in zip(meta, scored)]
            dropped = len(kept) - sum(scored)
            if dropped:
                _logger.warning(
                    "%s: %d of %d sequences dropped: no response token is left within --max-seq-length %d",
                    path, dropped, len(kept), length,
                )  # fmt: skip
            kept = [row for row, ok in zip(kept, scored) if ok]
            meta = [m for m, ok in zip(meta, scored) if ok]
            if not kept:
                raise ValueError(f"{path}: no row keeps a response token within --max-seq-length {length}")
            ids = torch.full((len(kept), length), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(kept), length), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(kept), length), dtype=torch.long)
            for row, (i, lab) in enumerate(kept):
                ids[row, : len(i)] = torch.tensor(i)
                labels[row, : len(lab)] = torch.tensor(lab)
                mask[row, : len(i)] = 1
        choice = torch.tensor(meta, dtype=torch.long).view(-1, 2)
        return TextSet(
            fields={"input_ids": ids, "attention_mask": mask},
            targets={"labels": labels, "choice_group": choice[:, 0], "choice_correct": choice[:, 1]},
            lengths=mask.sum(1),
        )


def _pack(encoded: list[tuple[list[int], list[int]]], length: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All examples end to end, cut into full rows of ``length`` tokens (the last partial row is dropped)."""
    ids = [t for i, _ in encoded for t in i]
    labels = [t for _, lab in encoded for t in lab]
    rows = len(ids) // length
    if rows == 0:
        raise ValueError(f"{path}: {len(ids)} tokens in all, fewer than one packed row of {length}")
    n = rows * length
    return torch.tensor(ids[:n]).view(rows, length), torch.tensor(labels[:n]).view(rows, length)
