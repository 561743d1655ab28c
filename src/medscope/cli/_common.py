"""What the command modules share: the -q parent parser, logging, and flags derived from the
option schemas (``medscope.options``, ``medscope.config``) so that no option is written twice."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.fields import PydanticUndefined

log = logging.getLogger("medscope")

# flag -> (schema field, argparse extras such as metavar)
Flags = dict[str, tuple[str, dict[str, Any]]]


def quiet() -> argparse.ArgumentParser:
    """The parent parser of every command: -q / --quiet."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or logs")
    return common


def add_command(subparsers: Any, name: str, help: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, parents=[quiet()], help=help)


def add_options(p: argparse.ArgumentParser, schema: type[BaseModel], flags: Flags) -> None:
    """One flag per schema field: type, choices, default and help come from the schema
    (``describe_field``); ``args.flags`` maps each field back to its flag, so that the library's
    ``OptionError`` is shown with the flag the user typed."""
    from medscope.config import describe_field

    for flag, (field, extra) in flags.items():
        doc = describe_field(field, schema)
        default = None if doc.default is PydanticUndefined else doc.default
        kwargs: dict[str, Any] = {"dest": field, "default": default}
        if doc.type is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = doc.type
            if doc.choices:
                kwargs["choices"] = doc.choices
        kwargs.update(extra)
        shown = kwargs["default"]
        note = "" if shown is None or shown is False or shown == [] else f" (default {shown})"
        p.add_argument(flag, help=f"{doc.help}{note}", **kwargs)
    p.set_defaults(flags={field: flag for flag, (field, _) in flags.items()})


def option_values(args: argparse.Namespace, flags: Flags) -> dict[str, Any]:
    """The parsed values of ``flags``, by schema field: keyword arguments of the api function."""
    return {field: getattr(args, field) for field, _ in flags.values()}


def setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def version() -> str:
    from medscope import __version__

    return f"medscope {__version__}"
