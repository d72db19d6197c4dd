"""task=infer on the tiny random-weight Gemma 3, in process: prompts, chat, batching, resume store, quant
modes and device maps that run on a CPU, and identical greedy output after a reload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.templates import without_system_role
from omegaconf import OmegaConf

from gemma_run import run
from gemma_run.app.errors import GemmaRunError
from gemma_run.infer.generate import plan_batches
from gemma_run.infer.prompts import PromptItem, collect
from gemma_run.infer.render import render
from gemma_run.infer.store import GenerationsFile

FAST = ["generation.max_new_tokens=6"]


def infer(compose_cfg, run_dir: Path, *overrides: str) -> tuple[dict, list[dict]]:
    result = run(compose_cfg([*FAST, *overrides]), run_dir)
    lines = (run_dir / "generations.jsonl").read_text().splitlines()
    return result, [json.loads(line) for line in lines]


def prompts_cfg(**keys):
    base = {"prompt": None, "prompts_file": None}
    return OmegaConf.create({**base, **keys})


# --- prompts ---------------------------------------------------------------------------------------------------

def test_txt_file_one_prompt_per_line_blank_lines_skipped(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first\n\n  \nsecond line\n")
    items, problems = collect(prompts_cfg(prompts_file=str(f)))
    assert not problems
    assert [(i.index, i.prompt, i.source) for i in items] == [(0, "first", f"{f}:1"), (1, "second line", f"{f}:4")]


def test_jsonl_prompt_messages_and_id(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "id": "x1"}\n{"messages": [{"role": "user", "content": "b"}]}\n')
    items, problems = collect(prompts_cfg(prompts_file=str(f)))
    assert not problems
    assert items[0].record() == {"index": 0, "id": "x1", "prompt": "a"}
    assert items[1].record() == {"index": 1, "messages": [{"role": "user", "content": "b"}]}


@pytest.mark.parametrize(("line", "words"), [
    ('{"prompt": "unterminated', "malformed JSON"),
    ('{"prompt": ""}', "empty prompt"),
    ('{"text": "hi"}', "no `prompt` or `messages`"),
    ('["hi"]', "expected a JSON object"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "last message"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path, line, words):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "fine"}\n' + line + "\n")
    _, problems = collect(prompts_cfg(prompts_file=str(f)))
    assert len(problems) == 1
    assert problems[0].key == f"{f}:2"
    assert words in problems[0].format() and "fix:" in problems[0].format()


def test_missing_file_and_empty_prompt_and_both_set(tmp_path):
    assert collect(prompts_cfg(prompts_file=str(tmp_path / "nope.txt")))[1][0].key == "prompts_file"
    assert collect(prompts_cfg(prompt="   "))[1][0].key == "prompt"
    assert "both" in collect(prompts_cfg(prompt="a", prompts_file="b.txt"))[1][0].problem


# --- batching and the generations store ------------------------------------------------------------------------

def test_batches_grouped_by_length_longest_first():
    lengths = [5, 50, 7, 48, 6, 49]
    assert plan_batches(lengths, 2) == [[1, 5], [3, 2], [4, 0]]
    assert plan_batches(lengths, 1) == [[0], [1], [2], [3], [4], [5]]  # batch 1: input order


def _items(n: int) -> list[PromptItem]:
    return [PromptItem(i, f"p.txt:{i + 1}", prompt=f"prompt {i}") for i in range(n)]


def test_store_drops_torn_last_line_and_finalizes_in_input_order(tmp_path):
    items = _items(3)
    store = GenerationsFile(tmp_path)
    store.append([{**items[2].record(), "completion": "c2"}, {**items[0].record(), "completion": "c0"}])
    with open(store.path, "a") as f:
        f.write('{"index": 1, "prompt": "prompt 1", "compl')  # the write SIGKILL interrupted
    again = GenerationsFile(tmp_path)
    assert sorted(again.load()) == [0, 2]
    again.check_matches(items)
    assert store.path.read_text().endswith("}\n")  # the torn piece is cut off
    again.append([{**items[1].record(), "completion": "c1"}])
    again.finalize()
    lines = [json.loads(x) for x in store.path.read_text().splitlines()]
    assert [(r["index"], r["completion"]) for r in lines] == [(0, "c0"), (1, "c1"), (2, "c2")]


def test_store_refuses_other_prompts_and_corrupt_middle_line(tmp_path):
    store = GenerationsFile(tmp_path)
    store.append([{**_items(1)[0].record(), "completion": "x"}])
    other = [PromptItem(0, "q.txt:1", prompt="something else")]
    with pytest.raises(GemmaRunError, match="other prompts") as e:
        store.check_matches(other)
    assert e.value.key == "resume"
    with open(store.path, "a") as f:
        f.write("garbage\n{\"index\": 1, \"prompt\": \"prompt 1\"}\n")
    with pytest.raises(GemmaRunError, match=r"generations.jsonl:2"):
        GenerationsFile(tmp_path).load()


# --- chat ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from gemma_run import compose
    from gemma_run.loading import checkpoint, load_tokenizer

    cache = Path(__import__("os").environ.get("GEMMA_RUN_TEST_CACHE") or tmp_path_factory.mktemp("tokcache"))
    cfg = compose([f"cache_dir={cache}"])
    return load_tokenizer(checkpoint.resolve(cfg.model, cfg.cache_dir), cfg.model)


def test_chat_system_prompt_folded_into_first_user_turn(tiny_tokenizer):
    text = render(PromptItem(0, "prompt", prompt="Hello"), tiny_tokenizer, chat=True, system_prompt="Be brief.")
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\n"
    plain = render(PromptItem(0, "prompt", prompt="Hello"), tiny_tokenizer, chat=False, system_prompt=None)
    assert plain == "Hello"


def test_chat_template_without_system_role_gets_it_folded(tiny_tokenizer):
    with without_system_role(tiny_tokenizer) as tok:
        text = render(PromptItem(0, "prompt", prompt="Hi"), tok, chat=True, system_prompt="Sys")
    assert text == "[user]Sys\n\nHi"


# --- end to end (in process) -----------------------------------------------------------------------------------

def test_single_prompt_records_stats(compose_cfg, tmp_path):
    result, records = infer(compose_cfg, tmp_path, "prompt=Hello there")
    assert [r["index"] for r in records] == [0] and records[0]["prompt"] == "Hello there"
    assert records[0]["new_tokens"] == result["new_tokens"] > 0
    assert result["tokens_per_second"] > 0 and result["time_to_first_token_s"] > 0
    assert result["peak_memory_bytes"]["cpu"] > 0
    assert result["bytes_per_device"] == {"cpu": 429060} and result["input_device"] == "cpu"


def test_batch_file_grouped_but_written_in_input_order(compose_cfg, tmp_path):
    prompts = ["hi", "The quick brown fox jumps over the lazy dog again and again", "What is it?",
               "Count from one to ten slowly please", "a", "Write a short poem about the sea and the waves"]
    f = tmp_path / "p.txt"
    f.write_text("\n".join(prompts) + "\n")
    _, batched = infer(compose_cfg, tmp_path / "b3", f"prompts_file={f}", "batch_size=3")
    _, single = infer(compose_cfg, tmp_path / "b1", f"prompts_file={f}", "batch_size=1")
    assert [r["index"] for r in batched] == list(range(len(prompts)))
    assert [r["prompt"] for r in batched] == prompts
    # left padding with the attention mask: a prompt's greedy answer does not depend on its batch mates
    assert [r["completion"] for r in batched] == [r["completion"] for r in single]


def test_chat_run_and_stop_string(compose_cfg, tmp_path):
    _, plain = infer(compose_cfg, tmp_path / "a", "prompt=Hello", "chat=true", "system_prompt=Be brief.")
    first = plain[0]["completion"]
    assert plain[0]["prompt_tokens"] > 10  # the template's turn markers and the system prompt are in the input
    stop = next((c for c in first[1:] if c.isprintable() and not c.isspace()), None)
    if stop is None:
        pytest.skip("the random model produced no printable character to stop at")
    _, stopped = infer(compose_cfg, tmp_path / "b", "prompt=Hello", "chat=true", "system_prompt=Be brief.",
                       f"generation.stop=[{json.dumps(stop)}]")
    assert stopped[0]["completion"] == first[:first.index(stop)]
    assert stopped[0]["stopped_by"] == "stop_string"


def test_sampling_is_reproducible_with_the_seed(compose_cfg, tmp_path):
    args = ("prompt=Hello", "generation.do_sample=true", "generation.temperature=1.5", "generation.top_k=0",
            "generation.top_p=1.0", "seed=7", "generation.max_new_tokens=12")
    _, a = infer(compose_cfg, tmp_path / "a", *args)
    _, b = infer(compose_cfg, tmp_path / "b", *args)
    assert a[0]["completion"] == b[0]["completion"]


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit", "fp4"])
def test_quant_modes_on_cpu(compose_cfg, tmp_path, quant):
    result, records = infer(compose_cfg, tmp_path, f"quant={quant}", "prompt=Hello")
    assert result["quant"] == quant and records[0]["new_tokens"] > 0
    size = result["bytes_per_device"]["cpu"]
    if quant == "none":
        assert size == 429060
    else:  # quantized Linears take 1 (8-bit) or 0.5 (4-bit) byte per weight instead of 4
        assert size < 429060 * (0.55 if quant == "8bit" else 0.45)


@pytest.mark.parametrize("device_map", [
    ["device_map=cpu"],
    ["device_map=auto"],
    ["device_map=explicit",
     "+device_map.map={model.embed_tokens:cpu,model.layers:cpu,model.norm:cpu,model.rotary_emb:cpu,lm_head:cpu}"],
    ["device_map=offload", "+device_map.max_memory.cpu=100KB"],  # most layers spill to disk
], ids=["cpu", "auto", "explicit", "disk_offload"])
def test_device_maps_give_the_same_greedy_output(compose_cfg, tmp_path, device_map):
    overrides = list(device_map)
    if device_map[0] == "device_map=offload":
        overrides += [f"device_map.offload_folder={tmp_path / 'offload'}"]
    _, reference = infer(compose_cfg, tmp_path / "ref", "device_map=cpu", "prompt=Hello")
    result, records = infer(compose_cfg, tmp_path / "run", *overrides, "prompt=Hello")
    assert records[0]["completion"] == reference[0]["completion"]
    if device_map[0] == "device_map=offload":
        # (transformers reads offloaded safetensors weights from the checkpoint itself, so the folder may stay empty)
        assert result["bytes_per_device"].get("disk", 0) > 200_000


def test_bf16_greedy_identical_after_reload_of_the_same_weights(compose_cfg, tmp_path):
    from gemma_run.loading import checkpoint

    cfg = compose_cfg()
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint.resolve(cfg.model, cfg.cache_dir), copy)
    args = ("model.dtype=bfloat16", "prompt=The quick brown fox", "generation.max_new_tokens=16")
    first, a = infer(compose_cfg, tmp_path / "a", *args)
    second, b = infer(compose_cfg, tmp_path / "b", *args, "model.weights=pretrained", f"model.path={copy}")
    assert first["dtype"] == second["dtype"] == "bfloat16"
    assert second["checkpoint"] == str(copy)
    assert a[0]["completion"] == b[0]["completion"] and a[0]["new_tokens"] == 16


def test_prompt_longer_than_context_is_refused_before_generating(compose_cfg, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("short one\n" + "hello " * 600 + "\n")  # tiny_gemma3's context: 512 positions
    with pytest.raises(GemmaRunError) as e:
        run(compose_cfg([*FAST, f"prompts_file={f}"]), tmp_path / "run")
    assert e.value.key == f"{f}:2" and "context of 512" in e.value.problem
    assert "max_new_tokens" in e.value.fix or "shorten" in e.value.fix
    assert not (tmp_path / "run" / "generations.jsonl").exists()  # checked before the first batch


def test_resume_in_process_skips_done_prompts(compose_cfg, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\nthree\n")
    run_dir = tmp_path / "run"
    result, first = infer(compose_cfg, run_dir, f"prompts_file={f}")
    assert result["generated"] == 3
    result, again = infer(compose_cfg, run_dir, f"prompts_file={f}")
    assert result["generated"] == 0 and result["skipped"] == 3 and again == first
