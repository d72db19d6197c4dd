"""Training data: records -> token ids and labels (prompts masked), truncation counted, eval split, collator.

Instruction (alpaca) records become a user/assistant exchange and go through the tokenizer's chat template like
chat records, so a fine-tuned model answers `task=infer chat=true` prompts in the format it was trained on.
Loss on completions only: every token the template adds for a prompt gets label -100; the assistant's text and
its end-of-turn marker are learned (so the model learns to stop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.chat import join_system
from gemma_run.training import data_files as rec

log = logging.getLogger(__name__)

IGNORE = -100  # the label value torch's cross-entropy skips
# Used for alpaca records when the tokenizer has no chat template (e.g. a base GPT-2).
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


@dataclass
class Prepared:
    train: Any  # datasets.Dataset of input_ids / labels (/ token_type_ids)
    eval: Any | None
    collator: Any
    stats: dict[str, Any] = field(default_factory=dict)

    def add_token_type_ids(self) -> None:
        """Gemma 3's multimodal model reads token_type_ids (1 = image token) for its masks: text is all 0."""
        def zeros(row: dict[str, list]) -> dict[str, list]:
            return {"token_type_ids": [0] * len(row["input_ids"])}

        self.train = self.train.map(zeros)
        if self.eval is not None:
            self.eval = self.eval.map(zeros)


def _segments_chat(tokenizer: Any, messages: list[dict[str, Any]], where: str) -> list[tuple[str, bool]]:
    """The conversation as (text, trained) pieces: each assistant reply (with its end-of-turn) is trained."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        except Exception as e:  # jinja's TemplateError for role order etc.
            raise GemmaRunError(f"{where}: the chat template rejects this conversation: {e}", key=where,
                                fix="roles must alternate user/assistant (an optional system message first)") from e
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise GemmaRunError(f"{where}: this tokenizer's chat template does not render a conversation as an "
                                "extension of its first turns, so prompts cannot be masked", key="data.format",
                                fix="data.completion_only_loss=false (train on every token)")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    tail = tokenizer.apply_chat_template(messages, tokenize=False)[len(done):]
    if tail:
        pieces.append((tail, False))
    return pieces


def _segments(tokenizer: Any, data: dict[str, Any], fmt: str, where: str) -> list[tuple[str, bool]]:
    if fmt == "text":
        return [(data["text"], True)]
    if fmt == "alpaca":
        user = data["instruction"] + (f"\n\n{data['input']}" if data.get("input") else "")
        if tokenizer.chat_template:
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": data["output"]}]
            return _segments_chat(tokenizer, messages, where)
        block = f"### Input:\n{data['input']}\n\n" if data.get("input") else ""
        bos = tokenizer.bos_token or ""
        return [(bos + ALPACA_PROMPT.format(instruction=data["instruction"], input_block=block), False),
                (data["output"] + (tokenizer.eos_token or ""), True)]
    if not tokenizer.chat_template:
        raise GemmaRunError(f"data.format={fmt} needs a tokenizer with a chat template; this one has none",
                            key="data.format", fix="use a model whose tokenizer has one, or data.format=alpaca/text")
    return _segments_chat(tokenizer, join_system(data["messages"]), where)  # several system messages: joined


def tokenize(tokenizer: Any, data: dict[str, Any], fmt: str, where: str, completion_only: bool) -> dict[str, list]:
    """input_ids and labels of one record (not yet truncated)."""
    ids: list[int] = []
    labels: list[int] = []
    pieces = _segments(tokenizer, data, fmt, where)
    for i, (text, trained) in enumerate(pieces):
        # plain text gets the tokenizer's own <bos>; templated text already has it
        special = fmt == "text" and i == 0
        piece = tokenizer(text, add_special_tokens=special)["input_ids"]
        ids += piece
        labels += piece if (trained or not completion_only) else [IGNORE] * len(piece)
    if fmt == "text" and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return {"input_ids": ids, "labels": labels}


def encode_all(tokenizer: Any, records: list[rec.Record], fmt: str, *, max_len: int, completion_only: bool,
               key: str, context: int | None = None) -> tuple[list[dict[str, list]], dict[str, int]]:
    """Tokenize and truncate every record; count truncations and examples left with nothing to learn.

    ``context``: the model's context length (max_position_embeddings); a suggested max_seq_length stays within it.
    """
    rows, truncated, empty, longest = [], 0, 0, 0
    for r in records:
        row = tokenize(tokenizer, r.data, fmt, r.where, completion_only)
        longest = max(longest, len(row["input_ids"]))
        if len(row["input_ids"]) > max_len:
            truncated += 1
            row = {k: v[:max_len] for k, v in row.items()}
        if all(label == IGNORE for label in row["labels"][1:]):  # the first label is never predicted
            empty += 1
            continue
        rows.append(row)
    stats = {"records": len(records), "truncated": truncated, "dropped_no_target": empty, "longest": longest}
    if truncated == len(records):
        raise GemmaRunError(f"{key}: all {len(records)} examples are longer than train.max_seq_length={max_len} "
                            f"tokens (the longest has {longest})", key="train.max_seq_length",
                            fix=_length_fix(longest, max_len, context, "or shorten the examples"))
    if not rows:
        raise GemmaRunError(f"{key}: no example has a response token left to learn from after truncation at "
                            f"train.max_seq_length={max_len}", key="train.max_seq_length",
                            fix=_length_fix(longest, max_len, context, "or shorten the prompts"))
    if truncated:
        log.warning("data: %d of %d examples truncated at train.max_seq_length=%d (longest: %d tokens)",
                    truncated, len(records), max_len, longest)
    if empty:
        log.warning("data: %d examples dropped: no response token left after truncation", empty)
    return rows, stats


def _round_up(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def _length_fix(longest: int, max_len: int, context: int | None, otherwise: str) -> str:
    """The max_seq_length that holds the longest example, never past the model's context."""
    if context is None or _round_up(longest) <= context:
        return f"train.max_seq_length={_round_up(longest)} ({otherwise})"
    if longest <= context:
        return f"train.max_seq_length={context} (the model's context; {otherwise})"
    if max_len < context:
        return (f"train.max_seq_length={context} (the model's context; longer examples are cut there), and "
                f"shorten or split the examples over {context} tokens (the longest has {longest})")
    return (f"shorten or split the examples: the model's context is {context} tokens (the longest has "
            f"{longest})")


def context_length(model_config: Any) -> int | None:
    """The positions a model was built for (max_position_embeddings), from its config (a dict, or a model
    config object); None when the config does not say."""
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if hasattr(obj, "get") else getattr(obj, name, None)

    config = get(model_config, "text_config") or model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = get(config, name)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class Checked:
    fmt: str
    train: list[rec.Record]
    eval: list[rec.Record] | None


def read_checked(cfg: Any) -> Checked:
    """Every record read and checked (no tokenizer, no model): run before anything heavy is loaded."""
    d = cfg.data
    train_records = rec.read(d.train_file, "data.train_file")
    fmt = d.format.value if hasattr(d.format, "value") else str(d.format)
    fmt = rec.detect_format(train_records[0]) if fmt == "auto" else fmt
    rec.check(train_records, fmt)
    rec.normalize(train_records, fmt)
    eval_records = None
    if d.eval_file:
        eval_records = rec.read(d.eval_file, "data.eval_file")
        rec.check(eval_records, fmt)
        rec.normalize(eval_records, fmt)
    return Checked(fmt, train_records, eval_records)


# Unpacked batches are padded to a multiple of this many tokens. Triton specializes kernels on sizes divisible
# by 16, so every padded size shares one compiled kernel; tensor cores like it too.
PAD_MULTIPLE = 16


def prepare(cfg: Any, tokenizer: Any, checked: Checked, context: int | None = None) -> Prepared:
    """Datasets and collator for ``cfg`` (data, train, seed) from records already checked.

    ``context``: the model's context length, which a suggested train.max_seq_length never exceeds."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    d, t = cfg.data, cfg.train
    fmt, train_records, eval_records = checked.fmt, checked.train, checked.eval
    completion_only = bool(d.completion_only_loss) and fmt != "text"
    tokenizer.padding_side = "right"  # training pads after the text; generation (infer) pads before it
    rows, stats = encode_all(tokenizer, train_records, fmt, max_len=t.max_seq_length,
                             completion_only=completion_only, key="data.train_file", context=context)
    stats.update(format=fmt, completion_only_loss=completion_only, packing=bool(d.packing))
    train = Dataset.from_list([_finish(r) for r in rows])
    evaluation = None
    if eval_records is not None:
        eval_rows, eval_stats = encode_all(tokenizer, eval_records, fmt, max_len=t.max_seq_length,
                                           completion_only=completion_only, key="data.eval_file", context=context)
        evaluation = Dataset.from_list([_finish(r) for r in eval_rows])
        stats["eval_records"] = eval_stats["records"]
    elif d.eval_split > 0:
        seed = cfg.seed if d.split_seed is None else d.split_seed
        split = train.train_test_split(test_size=d.eval_split, seed=seed)
        train, evaluation = split["train"], split["test"]
    stats["train_examples"] = len(train)
    stats["eval_examples"] = len(evaluation) if evaluation is not None else 0
    stats["train_tokens"] = sum(len(x) for x in train["input_ids"])
    if d.packing:
        # one row per batch, examples kept apart by restarting position ids (the attention masks follow them)
        collator = DataCollatorWithFlattening(separator_id=IGNORE)
    else:
        # Batches padded to a multiple of PAD_MULTIPLE: fewer distinct shapes, each of which costs a kernel
        # compile (Triton's, for the fused ops and loss) or a cuDNN attention plan the first time it appears.
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE,
                                          pad_to_multiple_of=PAD_MULTIPLE)
    log.info("data: %d train / %d eval examples (%s, %d tokens, %d truncated)", stats["train_examples"],
             stats["eval_examples"], fmt, stats["train_tokens"], stats["truncated"])
    return Prepared(train=train, eval=evaluation, collator=collator, stats=stats)


def _finish(row: dict[str, list]) -> dict[str, list]:
    return {"input_ids": row["input_ids"], "attention_mask": [1] * len(row["input_ids"]), "labels": row["labels"]}
