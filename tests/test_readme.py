"""The README's examples run as written.

Every line starting with `gemma-run ` in a ```bash block of README.md (`\\` continuations joined; the
`<!-- ci:setup -->` / `<!-- ci:test -->` blocks are .ci/run's, not examples) is one example:

- A line whose trailing comment starts with `needs` (`... # needs 3 GPUs and the gemma3_27b weights`) shows a
  setup this machine cannot run (a GPU, real weights, files the test cannot make): it must at least compose,
  `gemma-run --cfg job <the line>` exiting 0.
- Every other line runs for real through the `cli` fixture, in a temp dir, on whatever model it names (the tiny
  default for these). The test only ADDS overrides that make it fast (`SHRINK`, per task); a key the line sets
  itself is left as written.
- Placeholder: `outputs/DATE/TIME` in a line stands for the run dir the previous command of the same block
  created (train -> merge -> infer on the merged model); the real dir is substituted before the line runs.
- Files the examples read (`FILES`: train.jsonl, prompts.jsonl) are written into the temp dir with small content.

Each block runs in its own temp dir, its lines in order.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.runs import REPO

README = REPO / "README.md"
PLACEHOLDER = "outputs/DATE/TIME"
NEEDS = re.compile(r"\s#\s*needs\b")

# Overrides added (never replacing what the line says) so that each task finishes in seconds.
SHRINK: dict[str, dict[str, str]] = {
    "infer": {"generation.max_new_tokens": "2"},
    "train": {"train.max_steps": "2", "train.logging_steps": "1", "train.max_seq_length": "128"},
    "test": {"task.new_tokens": "2"},
}

FILES: dict[str, str] = {
    "train.jsonl": "".join(
        json.dumps({"instruction": f"Add {i} and {i}.", "output": str(2 * i)}) + "\n" for i in range(8)
    ),
    "prompts.jsonl": (
        '{"id": "q1", "prompt": "What is the capital of France?"}\n'
        '{"id": "q2", "messages": [{"role": "user", "content": "Count to three"}]}\n'
        '{"id": "q3", "prompt": "Write a short poem about the sea."}\n'
    ),
}


@dataclass(frozen=True)
class Example:
    line: int  # README line number where the command starts
    text: str  # the command as written, continuations joined

    @property
    def args(self) -> list[str]:
        """The arguments after `gemma-run`, as the shell passes them (quotes removed, comment dropped)."""
        return shlex.split(self.text, comments=True)[1:]

    @property
    def needs(self) -> bool:
        return bool(NEEDS.search(self.text))

    @property
    def task(self) -> str:
        tasks = [a.split("=", 1)[1] for a in self.args if a.startswith("task=")]
        return tasks[-1] if tasks else "infer"


def bash_blocks(text: str) -> list[list[Example]]:
    """The examples of each ```bash block outside the ci blocks, block by block."""
    blocks: list[list[Example]] = []
    in_ci = in_block = False
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(r"<!-- ci:\w+ -->", line):
            in_ci = True
        elif re.match(r"<!-- /ci:\w+ -->", line):
            in_ci = False
        elif line.startswith("```"):
            if not in_block and line.strip() == "```bash" and not in_ci:
                in_block = True
                blocks.append([])
            elif in_block:
                in_block = False
        elif in_block:
            start, joined = pending if pending else (number, "")
            joined += line.rstrip()
            if joined.endswith("\\"):
                pending = (start, joined[:-1] + " ")
                continue
            pending = None
            if joined.startswith("gemma-run "):
                blocks[-1].append(Example(start, joined))
    return [b for b in blocks if b]


BLOCKS = bash_blocks(README.read_text())


def shrunk(example: Example, args: list[str]) -> list[str]:
    """``args`` plus the task's SHRINK overrides whose key the line does not set itself."""
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    extra = [f"{k}={v}" for k, v in SHRINK.get(example.task, {}).items() if k not in given]
    return [*args, *extra]


def run_dirs(root: Path) -> set[Path]:
    return {p for p in (root / "outputs").glob("*/*") if p.is_dir()}


def test_readme_has_the_examples_a_newcomer_needs() -> None:
    examples = [e for block in BLOCKS for e in block]
    runnable = [e for e in examples if not e.needs]
    assert {e.task for e in runnable} >= {"infer", "plan", "train", "merge", "test"}, [e.text for e in runnable]
    assert any("-m" in e.args for e in runnable), "no sweep (-m) example"
    assert all("ci:" not in e.text and not e.text.startswith(("ruff", "pip")) for e in examples)


def test_readme_links_point_to_files() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"README:{b[0].line}" for b in BLOCKS])
def test_readme_example_runs(block: list[Example], cli, tmp_path: Path) -> None:
    for name, content in FILES.items():
        (tmp_path / name).write_text(content)
    last_run_dir: Path | None = None
    for example in block:
        where = f"README.md:{example.line}: {example.text}"
        args = example.args
        if any(PLACEHOLDER in a for a in args):
            assert last_run_dir is not None, f"{where}: {PLACEHOLDER} but no command before it made a run dir"
            rel = str(last_run_dir.relative_to(tmp_path))
            args = [a.replace(PLACEHOLDER, rel) for a in args]
        if example.needs:
            proc = cli("--cfg", "job", *args)
            assert proc.returncode == 0, f"{where}\ndoes not compose:\n{proc.stderr[-3000:]}"
            continue
        before = run_dirs(tmp_path)
        proc = cli(*shrunk(example, args))
        assert proc.returncode == 0, f"{where}\nexit code {proc.returncode}:\n{proc.stderr[-3000:]}"
        new = sorted(run_dirs(tmp_path) - before)
        if "-m" in args:
            assert list(tmp_path.glob("multirun/*/*/summary.md")), f"{where}: no sweep summary"
        else:
            assert len(new) == 1, f"{where}: expected one new run dir, got {new}"
            last_run_dir = new[0]
            assert (last_run_dir / "result.json").is_file(), f"{where}: no result.json in {last_run_dir}"
