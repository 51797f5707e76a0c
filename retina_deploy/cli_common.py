"""What every verb module of the CLI shares: the help formatter, verb registration and the progress switch."""

from __future__ import annotations

import argparse
import os
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        help_ = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_:
            help_ += " (default: %(default)s)"
        return help_


def progress_enabled() -> bool:
    """Progress bars on an interactive terminal, never under CI."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def add_verb(sub, name: str, help_: str, func) -> argparse.ArgumentParser:
    """A sub-command ``name`` whose ``args.func`` is ``func``."""
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
    p.set_defaults(func=func)
    return p
