"""Decorators: ``flexible_decorator``, ``catch`` and ``method_cache``.

``flexible_decorator`` turns a decorator factory into one that also works without brackets;
``catch`` and ``method_cache`` are built with it, so ``@catch``, ``@catch()`` and
``@catch(OSError)`` all work.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from functools import lru_cache, wraps
from inspect import isfunction
from typing import Any, TypeVar
from weakref import ref

#: An exception class, or a tuple of them, as accepted by ``except``.
Exceptions = type[BaseException] | tuple[type[BaseException], ...]

Function = TypeVar("Function", bound=Callable[..., Any])


def flexible_decorator(maybe_decorator: Callable | None = None) -> Callable:
    r"""
    Let a decorator factory be used bare: ``@factory`` then means ``@factory()``.

    Wrap a decorator *factory* (a function that takes options and returns a decorator) so that
    ``@factory`` means ``@factory()``.  A single positional argument that is a plain function
    (``inspect.isfunction``) is taken as the function to decorate; anything else is passed to the
    factory, so ``factory(OSError)`` still means "the factory with ``OSError`` as its first option".

    Examples:
        For decorator defined as follows:

        >>> @flexible_decorator
        ... def decorator(*args, **kwargs):
        ...     def wrapper(func, *args, **kwargs):
        ...         pass
        ...     return wrapper

        The following two are equivalent:

        >>> @decorator
        ... def func(*args, **kwargs):
        ...     pass

        >>> @decorator()
        ... def func(*args, **kwargs):
        ...     pass
    """

    def make_flexible(factory: Callable) -> Callable:
        @wraps(factory)
        def flexible(*args: Any, **kwargs: Any) -> Any:
            if len(args) == 1 and isfunction(args[0]):
                return factory(**kwargs)(args[0])
            return factory(*args, **kwargs)

        return flexible

    if maybe_decorator is None:
        return make_flexible
    return make_flexible(maybe_decorator)


def print_exc(
    exc: BaseException,
    func: Callable,
    args: tuple,
    kwargs: dict,
    verbosity: int = 40,
    verbose: bool = True,
) -> None:
    r"""Default ``catch`` callback: print the traceback of ``exc`` to ``stderr``.

    Args:
        exc: The exception that was caught.
        func: The function that raised it.
        args: Positional arguments of the failing call.
        kwargs: Keyword arguments of the failing call.
        verbosity: Logging-style level; ``<= 20`` adds the calling stack, ``<= 10`` adds the
            call's arguments, negative prints nothing.
        verbose: ``False`` prints nothing (same as a negative ``verbosity``).
    """
    if not verbose or verbosity < 0:
        return
    lines = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()]
    lines.append(f"encountered when calling {func}")
    if verbosity <= 20:
        lines.append("\nstack:\n" + "".join(traceback.format_stack()[:-2]).rstrip())
    if verbosity <= 10:
        lines.append(f"args: {args}\nkwargs: {kwargs}")
    message = "\n".join(lines)
    try:  # the runner's print router accepts ``force`` so non-main ranks still report errors
        print(message, file=sys.stderr, force=True)  # type: ignore[call-arg]
    except TypeError:
        print(message, file=sys.stderr)


@flexible_decorator
def catch(
    error: Exceptions = Exception,
    exclude: Exceptions | None = None,
    callback: Callable = print_exc,
    *callback_args: Any,
    **callback_kwargs: Any,
) -> Callable[[Function], Function]:
    r"""
    Decorator that turns a failure into a printed report: catch ``error`` unless it is ``exclude``.

    Use it for failures that must not stop a run, such as a periodic write to a full disk.  The
    decorated function returns ``None`` when it caught an error.  ``callback`` is called as
    ``callback(exc, func, args, kwargs, *callback_args, **callback_kwargs)``; the default prints
    the traceback to ``stderr`` (pass ``verbose=False`` to stay silent).

    Args:
        error: Exceptions to be caught.
        exclude: Exceptions to be re-raised even though they match ``error``.
        callback: Called when an error is caught.
        callback_args: Extra positional arguments for ``callback``.
        callback_kwargs: Extra keyword arguments for ``callback``.

    Examples:
        >>> def file_not_found(*args, **kwargs):
        ...     raise FileNotFoundError
        >>> func = file_not_found
        >>> func()
        Traceback (most recent call last):
        FileNotFoundError
        >>> func = catch(OSError)(file_not_found)
        >>> func()
        >>> func = catch(IOError)(file_not_found)
        >>> func()
        >>> func = catch(ZeroDivisionError)(file_not_found)
        >>> func()
        Traceback (most recent call last):
        FileNotFoundError
    """

    def decorate(func: Function) -> Function:
        @wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except error as exc:
                if exclude is not None and isinstance(exc, exclude):
                    raise
                callback(exc, func, args, kwargs, *callback_args, **callback_kwargs)
                return None

        return guarded  # type: ignore[return-value]

    decorate.__doc__ = catch.__doc__
    return decorate


@flexible_decorator
def method_cache(maxsize: int | None = 128, typed: bool = False) -> Callable[[Function], Function]:
    r"""
    Cache an instance method's results per instance, without keeping the instance alive.

    ``functools.lru_cache`` on a method keys the cache by ``self`` and holds a strong reference
    to it, so instances are never collected.  ``method_cache`` builds one ``lru_cache`` per
    instance on first call, stores it on the instance (under the method's name) and lets it reach
    the instance through a weak reference.  Arguments must be hashable; the instance needs a
    writable ``__dict__``.  ``instance.method.cache_info()`` and ``cache_clear()`` work after the
    first call.

    Examples:
        >>> class Square:
        ...     calls = 0
        ...     @method_cache
        ...     def of(self, x):
        ...         Square.calls += 1
        ...         return x * x
        >>> s = Square()
        >>> s.of(3), s.of(3), Square.calls
        (9, 9, 1)
        >>> s.of.cache_info()
        CacheInfo(hits=1, misses=1, maxsize=128, currsize=1)
    """

    def decorate(func: Function) -> Function:
        @wraps(func)
        def install_cache(self: Any, *args: Any, **kwargs: Any) -> Any:
            self_ref = ref(self)

            @wraps(func)
            @lru_cache(maxsize=maxsize, typed=typed)
            def cached(*args: Any, **kwargs: Any) -> Any:
                return func(self_ref(), *args, **kwargs)

            setattr(self, func.__name__, cached)
            return cached(*args, **kwargs)

        return install_cache  # type: ignore[return-value]

    return decorate
