"""`storefs config check`: the config a mount would use, validated without mounting, shown resolved.

It finds the file as `storefs mount` does (-c, $STOREFS_CONFIG, ~/.config/storefs/config.yaml,
/etc/storefs/storefs.yaml, the embedded default) and says which rule chose it. A config with
mistakes gets every one of them (file, key, reason), exit 1. A good one is printed as YAML after
${VAR} substitution, the STOREFS_* overrides and the defaults, with secrets as '***'.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

import yaml

from ..config import (
    EMBEDDED,
    SECRET_SHOWN,
    Config,
    ConfigErrors,
    FuseConfig,
    LocalProviderConfig,
    MinFree,
    RoutingRule,
    SizeLimits,
    find_config,
    load_config,
)
from ..errors import ConfigError

log = logging.getLogger(__name__)

#: Config fields that are not settings of the file: where it came from, what to warn about
NOT_SETTINGS = ("source", "warnings")
#: fuse settings shown as octal, the way they are written
OCTAL = ("umask", "file_mode", "dir_mode")


def _min_free(value: MinFree) -> Any:
    if value.percent is None:
        return value.size
    if value.size is None:
        return f"{value.percent:g}%"
    return f"{value.percent:g}% or {value.size} bytes, whichever is less"


def _provider(pcfg: Any) -> dict[str, Any]:
    """One providers: entry as the file writes it (type first), its secrets hidden."""
    out: dict[str, Any] = {"type": "local" if isinstance(pcfg, LocalProviderConfig) else "s3"}
    for f in dataclasses.fields(pcfg):
        value = getattr(pcfg, f.name)
        if f.name != "name" and not f.metadata.get("internal"):
            out[f.name] = SECRET_SHOWN if f.metadata.get("secret") and value else value
    return out


def _rule(rule: RoutingRule) -> dict[str, Any]:
    match = {name: getattr(rule, name) for name in ("type", "size_gt", "size_lt") if getattr(rule, name) is not None}
    return {"match": match, "provider": rule.provider} if match else {"provider": rule.provider}


def _plain(value: Any) -> Any:
    """A setting as YAML writes it: mappings, lists and scalars."""
    if isinstance(value, MinFree):
        return _min_free(value)
    if isinstance(value, SizeLimits):
        return {"default": value.default, **value.per_type}
    if isinstance(value, FuseConfig):
        return {f.name: (f"{getattr(value, f.name):04o}" if f.name in OCTAL and getattr(value, f.name) is not None
                         else getattr(value, f.name)) for f in dataclasses.fields(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def resolved(cfg: Config) -> dict[str, Any]:
    """The settings a mount of cfg uses, every default filled in, secrets as '***'."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in NOT_SETTINGS:
            continue
        if f.name == "providers":
            out[f.name] = {name: _provider(p) for name, p in value.items()}
        elif f.name == "routing_rules":
            out[f.name] = [_rule(r) for r in value]
        else:
            out[f.name] = _plain(value)
    return out


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config without mounting: every mistake (exit 1), or the resolved config (exit 0)."""
    found = find_config(args.config)
    name = found.path or EMBEDDED
    try:
        cfg = load_config(found.path)
    except ConfigError as e:
        mistakes = e.errors if isinstance(e, ConfigErrors) else [e]
        print(f"storefs: config {name} (found by {found.rule}): {len(mistakes)} "
              f"{'mistake' if len(mistakes) == 1 else 'mistakes'}", file=sys.stderr)
        for mistake in mistakes:
            print(f"  {mistake}", file=sys.stderr)
        return 1
    for warning in cfg.warnings:
        print(f"storefs: WARNING: {warning}", file=sys.stderr)
    print(f"# storefs config check: {name} is valid\n# found by: {found.rule}\n"
          "# resolved: ${VAR} replaced, STOREFS_* overrides and defaults applied, secrets shown as ***")
    yaml.safe_dump(resolved(cfg), sys.stdout, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return 0


def add_config_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `storefs config check` on the storefs command line."""
    c = sub.add_parser("config", help="check the config without mounting")
    actions = c.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="validate the config a mount would use, report every mistake, "
                                             "print it resolved (secrets hidden)")
    check.add_argument("-c", "--config", help="YAML config file (default: the one `storefs mount` finds "
                                              "without -c)")
    check.set_defaults(func=cmd_config_check)
