"""Read the YAML file, apply RADNODE_* environment overrides, validate, explain errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from node.config.model import NodeConfig, field_hint
from node.errors import ConfigError

ENV_PREFIX = "RADNODE_"
ENV_CONFIG_PATH = "RADNODE_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/node.yaml")
_SECTIONS = frozenset(NodeConfig.model_fields)


def resolve_config_path(path: str | Path | None) -> Path:
    """The config file to use: the argument, else $RADNODE_CONFIG, else config/node.yaml."""
    if path:
        return Path(path)
    env = os.environ.get(ENV_CONFIG_PATH)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> NodeConfig:
    """Load and validate the configuration; raise ConfigError with IT-readable reasons."""
    config_path = resolve_config_path(path)
    env = os.environ if environ is None else environ
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path}: no such file. Pass --config with the path of the node's YAML "
            f"configuration, or copy config/node.yaml as a start."
        ) from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot be read ({exc.strerror}).") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{config_path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}. "
            "Check the indentation and the quoting there."
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{config_path}: the top level must be a mapping of sections (node, storage, "
            f"sources, ...), not a {type(raw).__name__}."
        )
    overridden = apply_env_overrides(raw, env)
    try:
        return NodeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(config_path, exc, overridden)) from None


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply RADNODE_SECTION__KEY=value variables to `raw` in place.

    Levels are joined by `__`; list items are addressed by index
    (RADNODE_SOURCES__0__AE_TITLE). Values are read as YAML scalars, so numbers and
    booleans keep their types. Variables whose first level is not a config section
    (RADNODE_CONFIG, RADNODE_SHARED_DATA) are not configuration and are left alone.
    Returns the dotted keys that were overridden, mapped to their variable names.
    """
    applied: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in _SECTIONS or any(not p for p in parts):
            continue
        value = yaml.safe_load(environ[name]) if environ[name] else None
        _set_path(raw, parts, value, name)
        applied[".".join(parts)] = name
    return applied


def _set_path(node: Any, parts: list[str], value: Any, var: str) -> None:
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"environment variable {var}: {'.'.join(parts[:i])} has {len(node)} "
                    f"items, so {part!r} is not an index there. Use 0 to {len(node) - 1}."
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(
                f"environment variable {var}: {'.'.join(parts[:i])} is not a section, so it "
                "has no keys to override."
            )
        if last:
            node[part] = value
        else:
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
                node[part] = nxt
            node = nxt


def _explain(path: Path, exc: ValidationError, overridden: dict[str, str]) -> str:
    problems: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = _dotted(loc) or "(top level)"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            line = f"{key}: unknown key. Check its spelling; see config/node.yaml for the keys."
        elif err["type"] == "missing":
            hint = field_hint(loc)
            line = f"{key}: missing. Add it" + (f": {hint}." if hint else ".")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict | list) or value is None else f" = {value!r}"
            line = f"{key}{shown}: {message}."
            hint = field_hint(loc)
            if hint:
                line += f"\n      What it is: {hint}."
        if key in overridden:
            line += f"\n      (set by the environment variable {overridden[key]})"
        problems.append(line)
    count = len(problems)
    header = f"{path}: the configuration is not valid ({count} problem{'s' if count > 1 else ''})"
    return header + ":\n" + "\n".join(f"  - {p}" for p in problems)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
