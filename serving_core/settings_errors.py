"""Settings errors named by their environment variables, the same way in every service."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError


def setting_problems(
    exc: ValidationError, prefix: str, *, aliases: Mapping[str, str] | None = None, show_input: bool = True
) -> list[str]:
    """One `VARIABLE: message` per problem, e.g. `TORCH_SERVICE_PORT: Input should be ... (got '70000')`.

    A field read under an alias of its own (MODEL_REPOSITORY) is named by it; a check across several
    settings (a model validator, no location) names its variables in its own message. `show_input=False`
    keeps the rejected value out of the message (a service whose settings hold secrets)."""
    problems = []
    for err in exc.errors():
        field = ".".join(map(str, err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        if not field:
            problems.append(msg)
            continue
        var = field if field.isupper() else (aliases or {}).get(field, f"{prefix}{field.upper()}")
        problems.append(f"{var}: {msg} (got {err.get('input')!r})" if show_input else f"{var}: {msg}")
    return problems
