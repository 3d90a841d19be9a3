"""A user's own models, named by import path so that every job process can build them:

    student.model: "models/tiny.py:tiny8"       # a file (relative: against the config file's folder) and a function
    student.model: "my_pkg.models:tiny8"        # a module importable from the working directory, as with `python -m`

The function is a factory called as `fn(num_classes=N)` that returns an `nn.Module`, like the registry's built-ins.
Each job runs in a child process that imports only leankd and what its config names, so the file or module is
imported again there: a script that defines its models must keep its run under `if __name__ == "__main__":`
(as with multiprocessing); an experiment started while a job imports it fails with one line saying so.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

from leankd.errors import ModelError, did_you_mean

IN_JOB_ENV = "LEANKD_IN_JOB"  # set by the executors for each job's child process
MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
FILE_MODULES = "leankd_user_"  # the prefix of the module names files are imported under
GUARD = ("put your script's run under `if __name__ == \"__main__\":` (each job process imports the file to find "
         "its models, as multiprocessing does)")


class StartedInJob(BaseException):
    """An experiment started inside a job's child process, i.e. by a user's script imported there for its models.
    A BaseException, as SystemExit is, so that `leankd.cli.main` or the script's own handlers do not swallow it."""


def refuse_in_job() -> None:
    """Refuse to start an experiment inside a job's child process (an unguarded script being imported there)."""
    if os.environ.get(IN_JOB_ENV):
        raise StartedInJob(f"an experiment was started inside a job's child process: {GUARD}")


def is_import_path(name: str) -> bool:
    """`FILE.py:FUNCTION` or `package.module:FUNCTION` (a function name may be dotted: `Class.build`)."""
    target, sep, attr = name.rpartition(":")
    return bool(sep) and MODULE.fullmatch(attr) is not None and (target.endswith(".py") or
                                                                   MODULE.fullmatch(target) is not None)


def absolute_ref(name: str, base: Path | None = None) -> str:
    """An import path with its file made absolute (a relative one against `base`, default the working directory);
    any other name unchanged."""
    target, _, attr = name.rpartition(":")
    if not is_import_path(name) or not target.endswith(".py"):
        return name
    return f"{(Path(base or Path.cwd()) / Path(target).expanduser()).resolve()}:{attr}"


def origin_of(fn: Callable) -> str | None:
    """The import path a job process can rebuild `fn` by: its module's (a script run as `python -m pkg.mod` by that
    name, one run as a file or imported from a file by its path), or None when it has none (an interactive
    session, a function defined inside another)."""
    module = sys.modules.get(fn.__module__)
    if "<locals>" in fn.__qualname__ or module is None:
        return None
    if fn.__module__ != "__main__" and not fn.__module__.startswith(FILE_MODULES):
        return f"{fn.__module__}:{fn.__qualname__}"
    spec = getattr(module, "__spec__", None)
    if fn.__module__ == "__main__" and spec is not None and spec.name and spec.name != "__main__":
        return f"{spec.name}:{fn.__qualname__}"  # python -m pkg.mod
    path = getattr(module, "__file__", None) or inspect.getsourcefile(fn)
    return f"{Path(path).resolve()}:{fn.__qualname__}" if path and str(path).endswith(".py") else None


def _import_error(what: str, err: BaseException, fix: str) -> ModelError:
    if isinstance(err, StartedInJob):
        return ModelError(f"model error: importing '{what}' started an experiment in a job's child process: {GUARD}")
    if isinstance(err, SystemExit):
        return ModelError(f"model error: importing '{what}' called sys.exit({err.code}): {GUARD}")
    line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return ModelError(f"model error: cannot import '{what}' ({type(err).__name__}: {line}); {fix}")


def _loaded_from(path: Path) -> ModuleType | None:
    """A module already imported from `path` (the running script as __main__, or a module imported by name): it
    is used as is, never executed a second time."""
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and file.endswith(path.name) and os.path.realpath(file) == str(path):
            return module
    return None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelError(f"model error: file '{path}' not found; give FILE.py:FUNCTION naming an existing file (a "
                         "relative path in a config file resolves against that file's folder)")
    module = _loaded_from(path)
    if module is not None:
        return module
    stem = re.sub(r"\W", "_", path.stem)
    name = f"{FILE_MODULES}{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # its sibling files import, as when it runs as a script
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit, StartedInJob) as err:
        del sys.modules[name]
        raise _import_error(str(path), err, "fix the file") from None
    return module


def _import_module(name: str) -> ModuleType:
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == name:
        return main  # the running script, started as `python -m name`: not executed a second time
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` (which runs each job) has it
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit, StartedInJob) as err:
        raise _import_error(name, err, "fix the module, or make it importable from the working directory (as with "
                            "`python -m`), or name its file instead: FILE.py:FUNCTION") from None


def model_source(name: str) -> Path | None:
    """The source file of an import-path model (its contents enter the teacher key and row identities, so an
    edited model file retrains), or None for a built-in or hub name or a module without a file."""
    if not is_import_path(name):
        return None
    target = name.rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target).resolve()
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def load_factory(ref: str) -> Callable:
    """The function an import path names, checked to be callable as `fn(num_classes=N)`; one-line ModelErrors for
    a missing file, a module that fails to import, a missing or non-callable attribute."""
    target, _, attr = ref.rpartition(":")
    module = _import_file(Path(target).resolve()) if target.endswith(".py") else _import_module(target)
    obj = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            where = target if i == 0 else f"{target}:{'.'.join(attr.split('.')[:i])}"
            raise ModelError(f"model error: '{where}' has no '{part}'{did_you_mean(part, names)}; name a function "
                             "defined there that returns the model")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model error: '{ref}' is not callable ({type(obj).__name__}); name a function (or "
                         "nn.Module class) that returns the model")
    try:
        inspect.signature(obj).bind(num_classes=10)
    except TypeError as err:
        raise ModelError(f"model error: '{ref}' cannot be called as fn(num_classes=N) ({err}); give it a "
                         "num_classes argument") from None
    except ValueError:  # a builtin without a signature: left to the call
        pass
    return obj
