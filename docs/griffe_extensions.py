"""Griffe extension of the site: classes built in ``__new__`` show ``__new__``'s signature.

``NestedTensor`` takes its arguments in ``__new__`` and keeps a pass-through
``__init__(*args, **kwargs)``; griffe reads a class's parameters from ``__init__``, so the page
would show ``(*args, **kwargs)`` and report every documented argument as unknown.
"""

from __future__ import annotations

from typing import Any

import griffe


def _is_pass_through(function: griffe.Function) -> bool:
    kinds = [parameter.kind for parameter in function.parameters if parameter.name != "self"]
    return kinds == [griffe.ParameterKind.var_positional, griffe.ParameterKind.var_keyword]


class NewSignature(griffe.Extension):
    """Give a pass-through ``__init__`` the parameters of the class's ``__new__``."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        init, new = cls.members.get("__init__"), cls.members.get("__new__")
        if not (isinstance(init, griffe.Function) and isinstance(new, griffe.Function)):
            return
        if _is_pass_through(init):
            parameters = [parameter for parameter in new.parameters if parameter.name != "cls"]
            init.parameters = griffe.Parameters(
                griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword), *parameters
            )
