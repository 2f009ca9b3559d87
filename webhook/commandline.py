"""What the click commands of every wing share (``webhook.cli`` assembles them)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from webhook.errors import WhoexecError

F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn whoexec's own errors into click errors (exit 1, no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WhoexecError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
