"""Help text shared by both CLIs: every option's default shown once, descriptions and epilogs as written."""
from __future__ import annotations

import argparse
import textwrap
from typing import Sequence

from indistill.common.errors import DEBUG_ENV, add_debug_flag

#: the environment variables both CLIs read, as (name, what it does) for an epilog
COMMON_ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("INDISTILL_DATA", "dataset root if neither --data-root nor the config's data.root gives one (else ~/.cache/indistill/data)"),
    (DEBUG_ENV, "set to 1 to print a traceback with an error, as --debug does"),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help, unless the help names its default itself, the
    option is a flag (off unless given), a positional, or has no default (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("(default" in text or not action.option_strings or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool)):
            return text
        return f"{text} (default: %(default)s)"


def environment_epilog(variables: tuple[tuple[str, str], ...], width: int = 79) -> str:
    """An epilog listing ``variables`` (name, what it does), one wrapped paragraph each."""
    lines = ["environment variables:"]
    for name, what in variables:
        lines.extend(textwrap.wrap(f"{name}: {what}", width, initial_indent="  ", subsequent_indent="      ",
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def command_parser(prog: str, description: str, epilog: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A CLI's top-level parser (``--debug``, defaults shown) and its set of sub-commands."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    add_debug_flag(parser)
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def parse_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | None:
    """``argv`` parsed; None, after printing the help, when no sub-command was given (at most --debug)."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return None
    return args


def add_command(sub: argparse._SubParsersAction, name: str, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A sub-command whose own --help starts with ``help`` and shows each option's default."""
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          formatter_class=HelpFormatter, epilog=epilog)
