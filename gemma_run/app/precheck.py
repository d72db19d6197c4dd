"""Check the command line's overrides before Hydra runs anything, for errors that name the fix.

Hydra already lists the options of a group when one is unknown; this adds the nearest key for a misspelt
one, and checks every value of a sweep (`-m quant=none,4bti`) before any job starts.
"""

from __future__ import annotations

import difflib
import sys

from omegaconf import DictConfig, OmegaConf

# Flags that print instead of running, and flags that take a value.
_NO_RUN = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}
_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
               "--package", "-p", "--experimental-rerun"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_args(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """(overrides, config_dir, prints_only) from the command line."""
    overrides: list[str] = []
    config_dir, prints_only = None, False
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        name, eq, value = arg.partition("=")
        prints_only = prints_only or name in _NO_RUN
        if name in _WITH_VALUE and not eq:
            value = next(args, "")
        if name in ("--config-dir", "-cd"):
            config_dir = value
        if name in ("--info", "-i"):
            nxt = next(args, None)
            if nxt is not None and nxt not in _INFO_VALUES:
                overrides.append(nxt)
    return overrides, config_dir, prints_only


def expand(overrides: list[str]) -> list[list[str]]:
    """Override lists to compose: each sweep value once (others at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base = []
    sweeps = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            sweeps.append((key, values))
            base.append(f"{key}={values[0]}")
        else:
            base.append(o.input_line)
    runs = [base]
    for key, values in sweeps:
        for v in values[1:]:
            runs.append([f"{key}={v}" if item.startswith(f"{key}=") else item for item in base])
    return runs


def _paths(node: object, prefix: str = "") -> list[str]:
    if not OmegaConf.is_dict(node):
        return []
    out = []
    for key in node.keys():  # type: ignore[union-attr]
        path = f"{prefix}{key}"
        out.append(path)
        out.extend(_paths(OmegaConf.select(node, str(key), throw_on_missing=False), path + "."))
    return out


def nearest_key(cfg: DictConfig, dotted: str) -> str | None:
    """The existing key closest to a misspelt ``dotted`` key (model.hidden_sise -> model.config.hidden_size)."""
    dotted = dotted.lstrip("+~")
    paths = _paths(cfg)
    close = difflib.get_close_matches(dotted, paths, n=1, cutoff=0.75)
    if close:
        return close[0]
    head, _, leaf = dotted.rpartition(".")
    scored = [(difflib.SequenceMatcher(None, leaf, p.rpartition(".")[2]).ratio(), p) for p in paths
              if p.startswith(head.split(".")[0])]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= 0.75 else None


# Free-text keys never fail to parse (gemma_run/app/free_text.py quotes them); another key's odd value needs quotes.
_PARSE_FIX = ("""quote the value for Hydra inside the shell's quotes: key="'a value, with commas'" (prompt, """
              "system_prompt and generation.stop take any text as it is); a sweep is -m key=a,b")


def precheck(argv: list[str]) -> None:
    """Exit with one clear message (code 2) when an override cannot compose; else return."""
    overrides, config_dir, prints_only = split_args(argv)
    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    if prints_only or not overrides:
        return
    from hydra.errors import HydraException

    from gemma_run.app.api import compose

    try:
        runs = expand(overrides)
    except HydraException as e:
        _fail(f"cannot parse the overrides: {e}", _PARSE_FIX)
    for run in runs:
        try:
            cfg = compose(run, config_dir=config_dir)
        except Exception as e:  # Hydra/OmegaConf composition errors: report them, then add the fix
            _fail(_explain(e, run, config_dir), None)
        _refuse_unknown_keys(cfg)


def _refuse_unknown_keys(cfg: DictConfig) -> None:
    """A `+key=value` that no schema has would be ignored: refuse it with the nearest real key (exit 2)."""
    from gemma_run.app.errors import Problems
    from gemma_run.app.validation import unknown_keys

    problems = unknown_keys(cfg)
    if problems:
        print(problems[0].format() if len(problems) == 1 else Problems(problems).format(), file=sys.stderr)
        sys.exit(2)


def _unknown_override(error: Exception, run: list[str], config_dir: str | None) -> str | None:
    """For `key=value` on a key no schema has, the message naming the nearest real key (Hydra's own advice, the
    `+key` form, would add a key nothing reads); the `+key` form only where the key's parent is an open map."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from gemma_run.app.api import compose
    from gemma_run.app.validation import schema_fields

    cause = error.__cause__
    key = str(getattr(cause, "full_key", "") or "")
    item = next((o for o in run if o.split("=", 1)[0] == key), None)
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError) or item is None:
        return None
    value = item.split("=", 1)[1]
    try:
        base = compose([o for o in run if o is not item], config_dir=config_dir)
    except Exception:
        return None
    parent_key = key.rpartition(".")[0]
    parent = OmegaConf.select(base, parent_key, default=None) if parent_key else base
    if OmegaConf.is_dict(parent) and schema_fields(parent) is None:  # an open map: adding is how keys get there
        return f"`{parent_key}` has no key `{key.rpartition('.')[2]}` yet\n  at:  {key}\n  fix: +{key}={value}"
    near = nearest_key(base, key)
    hint = f"did you mean `{near}`?" if near else "no schema has it"
    fix = f"{near}={value}" if near else "see `gemma-run --cfg job` for the keys"
    return f"unknown key `{key}`: {hint}\n  at:  {key}\n  fix: {fix}"


def _explain(error: Exception, run: list[str], config_dir: str | None) -> str:
    from gemma_run.app.api import compose

    unknown = _unknown_override(error, run, config_dir)
    if unknown:
        return unknown
    msg = "\n".join(line for line in str(error).strip().splitlines() if not line.strip().startswith("base_"))
    cause = error.__cause__
    if cause is not None and str(cause).strip() not in msg:
        msg += "\n" + str(cause).strip()
    groups_only = [o for o in run if "." not in o.split("=", 1)[0]]
    try:
        base = compose(groups_only, config_dir=config_dir)
    except Exception:
        return msg
    for item in run:
        key = item.split("=", 1)[0]
        if "." not in key or key.startswith("+"):
            continue
        if OmegaConf.select(base, key.lstrip("~"), default="__missing__") == "__missing__":
            near = nearest_key(base, key)
            hint = f"did you mean `{near}`?" if near else "see `gemma-run --cfg job` for the keys"
            return f"unknown key `{key}`: {hint}\n{msg}"
    return msg


def _fail(message: str, fix: str | None) -> None:
    text = f"error: {message}"
    if fix:
        text += f"\n  fix: {fix}"
    print(text, file=sys.stderr)
    sys.exit(2)
