"""The servers' command line: they are configured by environment variables only, so the one argument
they take is `--help`, which lists those variables. Anything else is refused by name: before this,
`python -m gateway --help` started a gateway (or failed on its port), and a typo went unnoticed."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pydantic import AliasChoices
from pydantic_settings import BaseSettings


def settings_usage(prog: str, settings: type[BaseSettings], prefix: str, defaults: dict[str, str] | None = None) -> str:
    """`usage:` and one line per setting: its environment variable and default (`defaults` overrides
    how a default is shown, e.g. a path relative to the repository)."""
    lines = [f"usage: python -m {prog}   (configured by environment variables only)", ""]
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            var = alias.choices[0]
        elif isinstance(alias, str):
            var = alias
        else:
            var = f"{prefix}{name.upper()}"
        if defaults and name in defaults:
            default = defaults[name]
        elif field.default_factory is not None:
            default = str(field.default_factory())  # type: ignore[call-arg]
        elif isinstance(field.default, list):  # comma-separated in the environment
            default = ",".join(map(str, field.default)) or '""'
        else:
            default = str(field.default)
        lines.append(f"  {var:<44} default: {default}")
    return "\n".join(lines)


def refuse_arguments(prog: str, args: list[str], usage: Callable[[], str]) -> int | None:
    """None when there are no arguments (serve); else the exit status after printing: 0 for -h/--help
    (usage on stdout), 2 for anything else (named, with the usage, on stderr)."""
    if not args:
        return None
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    print(f"{prog}: unrecognized arguments: {' '.join(args)}\n{usage()}", file=sys.stderr)
    return 2
