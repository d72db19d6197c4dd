"""A tokenizer made here, with no download: byte-level BPE trained with the `tokenizers` library on a small
built-in corpus, Gemma's special tokens at Gemma's ids, and Gemma's chat template."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

# Gemma's ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3; the turn markers follow.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>"]

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model runs on the GPUs you have.
Gemma is a family of lightweight open models. Hello, how are you today? I am fine, thank you.
Write a short poem about the sea. The sea is wide and blue, and the waves come and go.
Explain what a transformer is. A transformer is a neural network built from attention and feed-forward layers.
What is the capital of France? The capital of France is Paris.
Translate to French: good morning. Bonjour. Count from one to ten: one two three four five six seven eight nine ten.
Summarize: the run loads the model, generates text, and writes the results into the run directory.
def add(a, b):\n    return a + b\nfor i in range(10):\n    print(i)
0 1 2 3 4 5 6 7 8 9 10 100 1000 2026. Question: Answer: Instruction: Input: Output: user model system
"""


def chat_template() -> str:
    return resources.files("gemma_run").joinpath("assets/gemma_chat_template.jinja").read_text()


def build_tokenizer(vocab_size: int, out_dir: Path, model_max_length: int = 8192):  # -> PreTrainedTokenizerFast
    """Train the tokenizer, wrap it for transformers, save it into ``out_dir`` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    bos = SPECIAL_TOKENS.index("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        model_max_length=model_max_length,
        padding_side="left",
    )
    fast.chat_template = chat_template()
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


def build_gemma3_processor(out_dir: Path, arch: Any) -> dict[str, int]:
    """Save a Gemma 3 image+text processor next to the tokenizer in ``out_dir`` (sized to the architecture's
    vision tower), so a random-weight multimodal model takes images like a published one. Returns the
    model config's image token ids, which must be this tokenizer's."""
    import transformers
    from transformers import AutoTokenizer, Gemma3Processor

    # transformers >= 5 without torchvision: the PIL image processor (the default class would warn and fall back)
    image_cls = getattr(transformers, "Gemma3ImageProcessorPil", None) or transformers.Gemma3ImageProcessor
    size = int(arch.vision_config.image_size)
    tokenizer = AutoTokenizer.from_pretrained(out_dir, extra_special_tokens=dict(IMAGE_TOKENS))
    processor = Gemma3Processor(image_processor=image_cls(size={"height": size, "width": size}),
                                tokenizer=tokenizer, chat_template=chat_template(),
                                image_seq_length=int(arch.mm_tokens_per_image))
    processor.save_pretrained(out_dir)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in IMAGE_TOKENS.items()}
    return {"boi_token_id": ids["boi_token"], "eoi_token_id": ids["eoi_token"], "image_token_id": ids["image_token"],
            "boi_token_index": ids["boi_token"], "eoi_token_index": ids["eoi_token"],
            "image_token_index": ids["image_token"]}
