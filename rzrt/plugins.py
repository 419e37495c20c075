"""Load user code that registers kernels: a .py file or an importable module name."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from rzrt.errors import RzrtError


class PluginError(RzrtError):
    """A plugin could not be found or raised while loading."""


def load_plugin(spec: str):
    """Import a plugin; its @rzrt.register_op decorators register its kernels. Returns the module."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise PluginError(f"plugin file not found: {spec}; expected a .py file or an importable module name")
        name = f"rzrt_plugin_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except RzrtError as e:
            del sys.modules[name]
            raise PluginError(f"plugin {spec}: {e}") from None
        except Exception as e:
            del sys.modules[name]
            raise PluginError(f"plugin {spec} raised {type(e).__name__} while loading: {e}") from None
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        if e.name == spec or spec.startswith(f"{e.name}."):
            raise PluginError(f"plugin {spec!r} is neither a .py file nor an importable module") from None
        raise PluginError(f"plugin {spec} failed to import {e.name!r}: {e}") from None
    except RzrtError as e:
        raise PluginError(f"plugin {spec}: {e}") from None
    except Exception as e:
        raise PluginError(f"plugin {spec} raised {type(e).__name__} while loading: {e}") from None
