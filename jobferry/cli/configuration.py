"""``jobferry config check``: the effective configuration, validated (touches nothing)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from jobferry.cli.common import add_command, config_of, group
from jobferry.config import config_as_dict


def cmd_config_check(args: argparse.Namespace) -> int:
    config = config_of(args)
    data = config_as_dict(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0


def register(top: Any) -> None:
    cfg = group(top, "config", "configuration")
    add_command(
        cfg, "check", "config.check", cmd_config_check, "validate and print the configuration"
    )
