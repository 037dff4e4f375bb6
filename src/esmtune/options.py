"""A command's options as one validated model, every bad option reported in one message.

The option models of ``evaluate``, ``explain``, ``plan`` and ``data split`` give the CLI its
flags (type, default, help) and Python callers the same checks; this base turns pydantic's
errors into the message a person reads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ValidationError

from esmtune.errors import EsmtuneError

__all__ = ["CheckedOptions"]


class CheckedOptions(BaseModel):
    """Options built with :meth:`checked`: all problems at once, each with what it accepts."""

    # The command named in the message ("evaluate", "data split" ...).
    command: ClassVar[str]
    # Name options as flags (``--fractions 0.8 0.3 0.1``) rather than ``name=value``.
    as_flags: ClassVar[bool] = False

    @classmethod
    def checked(cls, **values: Any) -> Self:
        """The options from keywords, every bad one reported at once.

        Raises:
            EsmtuneError: Naming each bad option, the value given and what it accepts.
        """
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            lines = [cls._problem(problem) for problem in error.errors()]
            raise EsmtuneError(
                f"invalid {cls.command} options:\n  - " + "\n  - ".join(lines)
            ) from None

    @classmethod
    def _problem(cls, problem: Any) -> str:
        name, given = str(problem["loc"][0]), problem["input"]
        message = problem["msg"].removeprefix("Value error, ")
        if not cls.as_flags:
            return f"{name}={given!r}: {message}"
        shown = " ".join(map(str, given)) if isinstance(given, list | tuple) else given
        return f"--{name.replace('_', '-')} {shown}: {message}"
