"""Griffe extension: Sphinx cross-reference roles in docstrings as plain code on the site.

esmtune's docstrings name other objects the Sphinx way (:class:`~esmtune.predict.Predictor`),
which Markdown would show as a stray ":class:" before the name. Here the role goes and the name
stays a code span, shortened as Sphinx would for a leading "~".
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`(?P<short>~?)(?P<target>[^`]+)`")


def plain_roles(text: str) -> str:
    """``:class:`~a.b.C``` -> ```C```, ``:func:`a.b``` -> ```a.b```."""

    def code(match: re.Match[str]) -> str:
        target = match.group("target")
        return f"`{target.rsplit('.', 1)[-1] if match.group('short') else target}`"

    return _ROLE.sub(code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles in every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Griffe event: the whole package is loaded (other extensions' docstrings included)."""
        pending: list[griffe.Object] = [pkg]
        while pending:
            obj = pending.pop()
            if obj.docstring is not None:
                obj.docstring.value = plain_roles(obj.docstring.value)
            pending.extend(m for m in obj.members.values() if not m.is_alias)  # type: ignore[misc]
