"""Free-text keys (gemma_run/schema/user_input.py: prompt, system_prompt, generation.stop) taken verbatim.

Hydra reads every override with its grammar, where quotes, `,` `=` `{}` `()` `[]` and `${...}` mean something:
`prompt="What's up?"` cannot be parsed and `prompt="Hello, how are you?"` is a sweep. :func:`verbatim` rewrites
each free-text override into one quoted Hydra string, so the key's value is the text exactly as given; every
other override is left to Hydra's grammar. On the command line `prompt=-` reads standard input and
`prompt=@file.txt` a file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from gemma_run.app.errors import GemmaRunError
from gemma_run.schema.user_input import FREE_TEXT

_OVERRIDE = re.compile(r"(\+{0,2})([A-Za-z_][\w.]*)=(.*)", re.DOTALL)
# OmegaConf reads backslashes specially only before `${`: 2N+1 of them there are N backslashes and a plain `${`.
_BEFORE_INTERPOLATION = re.compile(r"(\\*)\$\{")
# Hydra reads backslashes specially, inside quotes, only before a quote or the closing quote: 2N are N there.
_BEFORE_QUOTE = re.compile(r"(\\*)('|\Z)")


def escape_interpolation(text: str) -> str:
    """``text`` as an OmegaConf string value that reads back as ``text`` exactly (``${...}`` kept literal)."""
    return _BEFORE_INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", text)


def quote(text: str) -> str:
    """``text`` as one single-quoted Hydra value that OmegaConf reads back as ``text`` exactly (no interpolation)."""
    escaped = escape_interpolation(text)
    escaped = _BEFORE_QUOTE.sub(lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), escaped)
    return f"'{escaped}'"


def verbatim(overrides: list[str], *, read_input: bool = False, keep_quoted: bool = False,
             stdin: TextIO | None = None) -> list[str]:
    """``overrides`` with each free-text value rewritten so Hydra takes it as the text it is.

    ``read_input``: `-` reads ``stdin`` (default: the process's), `@path` a file, `@@text` is `@text` (the
    command line). ``keep_quoted``: a value that already is one Hydra quoted string is kept (compose(), whose
    callers may quote for Hydra themselves). Raises :class:`GemmaRunError` naming the key for input it cannot read.
    """
    out = []
    stdin_read_by = None
    for item in overrides:
        match = _OVERRIDE.fullmatch(item)
        spec = FREE_TEXT.get(match.group(2)) if match else None
        if spec is None:
            out.append(item)
            continue
        prefix, key, value = match.groups()  # type: ignore[union-attr]
        if (keep_quoted and _is_quoted(value)) or (spec.many and _is_list(value)):
            out.append(item)
            continue
        if read_input and spec.readable:
            if value == "-" and stdin_read_by is not None:
                raise GemmaRunError(f"{key}=-: standard input was already read for {stdin_read_by}", key=key,
                                    fix=f"pipe one of them and give the other as text or {key}=@file.txt")
            stdin_read_by = key if value == "-" else stdin_read_by
            value = read(key, value, stdin)
        text = quote(value)
        out.append(f"{prefix}{key}={f'[{text}]' if spec.many else text}")
    return out


def read(key: str, value: str, stdin: TextIO | None = None) -> str:
    """The text of a readable free-text value: `-` standard input, `@path` that file, `@@text` `@text`, else itself.
    One final newline (as echo and editors leave) is dropped."""
    if value == "-":
        return _read_stdin(key, stdin if stdin is not None else sys.stdin)
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@"):
        return _read_file(key, value[1:])
    return value


def _read_stdin(key: str, stream: TextIO | None) -> str:
    if stream is None or stream.isatty():
        raise GemmaRunError(f"{key}=- reads the {key} from standard input, but none is piped in", key=key,
                            fix=f'echo "Hello" | gemma-run {key}=-  (or {key}="Hello", or {key}=@file.txt)')
    text = _drop_final_newline(stream.read())
    if not text.strip():
        raise GemmaRunError(f"{key}=-: standard input is empty", key=key,
                            fix=f'pipe the text in: echo "Hello" | gemma-run {key}=-')
    return text


def _read_file(key: str, name: str) -> str:
    path = Path(name).expanduser()
    fix = (f"{key}=@FILE reads a UTF-8 text file (relative to the directory you run gemma-run from); "
           f"a {key} that starts with @ is written @@...")
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise GemmaRunError(f"{key}=@{name}: {path.resolve()} {what}", key=str(path), fix=fix)
    try:
        text = _drop_final_newline(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise GemmaRunError(f"{key}=@{name}: cannot read {path}: {e}", key=str(path), fix=fix) from e
    if not text.strip():
        raise GemmaRunError(f"{key}=@{name}: {path} is empty", key=str(path), fix=fix)
    return text


def _drop_final_newline(text: str) -> str:
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _parsed(value: str) -> object:
    """Hydra's value of ``key=value`` (a sweep comes back as its override), or None when it does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(f"key={value}")
    except HydraException:
        return None
    return override if override.is_sweep_override() else override.value()


def _is_quoted(value: str) -> bool:
    """One Hydra quoted string ('...' or "..."), as a caller quoting for Hydra writes it."""
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" and isinstance(_parsed(value), str)


def _is_list(value: str) -> bool:
    """A list in Hydra's grammar ([a, 'b c'])."""
    return value.startswith("[") and value.endswith("]") and isinstance(_parsed(value), list)
