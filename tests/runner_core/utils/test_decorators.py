"""catch, flexible_decorator and method_cache."""

from __future__ import annotations

import gc
import weakref

import pytest

from danling.utils import catch, flexible_decorator, method_cache, print_exc


def _raise(error: BaseException):
    def failing(*args, **kwargs):
        raise error

    return failing


def test_flexible_decorator_bare_and_called_forms_pass_options():
    calls = []

    @flexible_decorator
    def tag(label="default"):
        def decorate(func):
            calls.append(label)
            return func

        return decorate

    @tag
    def first():
        return 1

    @tag()
    def second():
        return 2

    @tag(label="custom")
    def third():
        return 3

    assert (first(), second(), third()) == (1, 2, 3)
    assert calls == ["default", "default", "custom"]
    assert tag.__name__ == "tag"


def test_flexible_decorator_without_argument_returns_meta_decorator():
    meta = flexible_decorator()

    @meta
    def factory(value=0):
        return lambda func: lambda: func() + value

    assert factory(lambda: 1)() == 1
    assert factory(value=5)(lambda: 1)() == 6


def test_catch_returns_none_and_reports_to_stderr(capsys):
    guarded = catch(OSError)(_raise(FileNotFoundError("missing.txt")))
    assert guarded(1, key="v") is None
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "FileNotFoundError: missing.txt" in captured.err
    assert "encountered when calling" in captured.err


def test_catch_bare_catches_any_exception(capsys):
    @catch
    def divide(a, b):
        return a / b

    assert divide(6, 3) == 2
    assert divide(1, 0) is None
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_catch_lets_other_and_excluded_errors_through():
    with pytest.raises(KeyError):
        catch(OSError)(_raise(KeyError("k")))()
    with pytest.raises(FileNotFoundError):
        catch(OSError, exclude=FileNotFoundError)(_raise(FileNotFoundError()))()
    catch((OSError, KeyError), exclude=FileNotFoundError, verbose=False)(_raise(KeyError()))()


def test_catch_calls_callback_with_call_details():
    seen = []

    def record(exc, func, args, kwargs, *extra, **options):
        seen.append((type(exc), func.__name__, args, kwargs, extra, options))

    def save(path, *, mode):
        raise PermissionError(path)

    guarded = catch(OSError, None, record, "extra", flag=True)(save)
    assert guarded("/root/x", mode="w") is None
    assert seen == [(PermissionError, "save", ("/root/x",), {"mode": "w"}, ("extra",), {"flag": True})]
    assert guarded.__name__ == "save"


def test_print_exc_verbosity_levels(capsys):
    def func():
        pass

    error = ValueError("bad")
    print_exc(error, func, (1,), {"k": 2}, verbose=False)
    assert capsys.readouterr().err == ""
    print_exc(error, func, (1,), {"k": 2}, verbosity=10)
    err = capsys.readouterr().err
    assert "ValueError: bad" in err and "stack:" in err and "args: (1,)" in err and "kwargs: {'k': 2}" in err
    print_exc(error, func, (1,), {"k": 2})
    err = capsys.readouterr().err
    assert "stack:" not in err and "args:" not in err


def test_method_cache_caches_per_instance():
    class Counter:
        def __init__(self, base):
            self.base = base
            self.calls = 0

        @method_cache(maxsize=1)
        def add(self, x):
            self.calls += 1
            return self.base + x

    a, b = Counter(10), Counter(20)
    assert (a.add(1), a.add(1), b.add(1)) == (11, 11, 21)
    assert (a.calls, b.calls) == (1, 1)
    a.add(2)  # evicts 1 (maxsize=1)
    a.add(1)
    assert a.calls == 3
    assert a.add.cache_info().maxsize == 1


def test_method_cache_does_not_keep_instances_alive():
    class Holder:
        @method_cache
        def value(self):
            return object()

    holder = Holder()
    first = holder.value()
    assert holder.value() is first
    reference = weakref.ref(holder)
    del holder
    gc.collect()
    assert reference() is None
