"""Script parameters: read a script's argparse parser and check commands against it.

``introspect_script`` reads the parser in a throwaway process (``probe.py``);
``build_command`` validates a Wooey-style ``command`` string against the result
and builds the argv to run.
"""

from __future__ import annotations

from jobferry.argspec.command import BuiltCommand, build_command
from jobferry.argspec.introspect import MutexGroup, ParamSpec, ScriptSpec, introspect_script

__all__ = [
    "BuiltCommand",
    "MutexGroup",
    "ParamSpec",
    "ScriptSpec",
    "build_command",
    "introspect_script",
]
