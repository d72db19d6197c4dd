"""A tokenizer made here, with no download: byte-level BPE trained with the `tokenizers` library on a small
built-in corpus, Gemma's special tokens at Gemma's ids, and the chat template of the model's family
(``model.chat_template`` names one of :data:`TEMPLATES`)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gemma_run.app.errors import ConfigError


@dataclass(frozen=True)
class ChatFormat:
    """A family's chat template (an asset of gemma_run) and the special tokens it writes, after Gemma's
    <pad>=0, <eos>=1, <bos>=2, <unk>=3. ``end_of_turn``: the token a reply ends with, a stop token of
    generation besides <eos> (None: generation stops where the runtime says, as for Gemma 3)."""

    asset: str
    special_tokens: tuple[str, ...]
    end_of_turn: str | None = None


TEMPLATES = {
    "gemma3": ChatFormat("gemma_chat_template.jinja",
                         ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                          "<end_of_image>", "<image_soft_token>")),
    # Gemma 4 turns are <|turn>role ... <turn|>; thinking and the thought channel have tokens of their own
    "gemma4": ChatFormat("gemma4_chat_template.jinja",
                         ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|think|>",
                          "<|channel>", "<channel|>", "<|image>", "<image|>", "<|image|>"),
                         end_of_turn="<turn|>"),
}
DEFAULT_TEMPLATE = "gemma3"
SPECIAL_TOKENS = list(TEMPLATES[DEFAULT_TEMPLATE].special_tokens)

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


def chat_format(name: str = DEFAULT_TEMPLATE) -> ChatFormat:
    """The chat format ``model.chat_template`` names; a name that is none of them is refused with the list."""
    if name not in TEMPLATES:
        raise ConfigError(f"model.chat_template={name!r} is not a chat format gemma-run builds",
                          key="model.chat_template", fix=f"one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def chat_template(name: str = DEFAULT_TEMPLATE) -> str:
    return resources.files("gemma_run").joinpath(f"assets/{chat_format(name).asset}").read_text()


def build_tokenizer(vocab_size: int, out_dir: Path, model_max_length: int = 8192,
                    template: str = DEFAULT_TEMPLATE):  # -> PreTrainedTokenizerFast
    """Train the tokenizer with the special tokens of the chat format ``template``, wrap it for transformers,
    save it into ``out_dir`` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = list(chat_format(template).special_tokens)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    bos = special_tokens.index("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=special_tokens[4:],
        model_max_length=model_max_length,
        padding_side="left",
    )
    fast.chat_template = chat_template(template)
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
