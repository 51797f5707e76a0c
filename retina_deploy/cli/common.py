"""What every verb module of the CLI shares: the help formatter, verb registration and the progress switch."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        help_ = str(action.help or "")
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_:
            help_ += " (default: %(default)s)"
        return help_


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line, ``PROG: error: MESSAGE``, and exit ``error_status``
    (the toolkit's status for bad input); ``--help`` is argparse's own. Sub-command parsers made by
    ``add_subparsers`` are of the same class."""

    error_status = 1

    def error(self, message: str):
        self.exit(self.error_status, f"{self.prog}: error: {' '.join(message.split())}\n")


def progress_enabled() -> bool:
    """Progress bars on an interactive terminal, never under CI."""
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def add_verb(sub, name: str, help_: str, func) -> argparse.ArgumentParser:
    """A sub-command ``name`` whose ``args.func`` is ``func``."""
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter)
    p.set_defaults(func=func)
    return p


class LibraryDefault(str):
    """A help text that ends with a default kept by the library, read only when ``--help`` is printed.

    The value goes where ``text`` has ``{}``, else in a closing "(default: ...)". ``target`` is
    ``"module:Class.field"`` (a dataclass field) or ``"module:function.parameter"``. The option itself
    defaults to None and is passed on only when given, so the library's value is the one place for
    the default, and building the parser imports nothing heavy (torch, onnxruntime).
    """

    def __new__(cls, text: str, target: str, fmt=str) -> LibraryDefault:
        self = super().__new__(cls, text)  # a str, so argparse's own checks on help texts work
        self.text, self.target, self.fmt = text, target, fmt
        return self

    def value(self):
        module, _, qualname = self.target.partition(":")
        owner_name, _, name = qualname.rpartition(".")
        owner = getattr(importlib.import_module(module), owner_name)
        if dataclasses.is_dataclass(owner):
            f = {f.name: f for f in dataclasses.fields(owner)}[name]
            return f.default_factory() if f.default is dataclasses.MISSING else f.default
        return inspect.signature(owner).parameters[name].default

    def __str__(self) -> str:
        value = self.fmt(self.value())
        text = self.text.format(value) if "{}" in self.text else f"{self.text} (default: {value})"
        return text.replace("%", "%%")


def given_options(args, **fields: str) -> dict:
    """{field: args.<attr>} for the options given on the command line (the config's own defaults stay)."""
    return {field: getattr(args, attr) for field, attr in fields.items() if getattr(args, attr) is not None}
