"""User plug-ins: modules named under the config key ``plugins``, imported before validation.

A plug-in module registers its own entries at import time (``@register_source``,
``@register_model``, ``@register_preset``); importing it first lets ``data.source``,
``model.name`` and ``augment.presets`` name them. Modules are found on ``sys.path`` (install the
package, or put its directory on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from invlab.config import ConfigError


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module (a dotted name such as ``my_lab.sources``) once, in order."""
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"Each entry of 'plugins' must be a module name such as 'my_lab.sources', got "
                f"{name!r}."
            )
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
                raise ConfigError(
                    f"Plug-in module {name!r} (config key 'plugins') was not found on the Python "
                    f"path. Install the package that provides it or add its directory to "
                    f"PYTHONPATH, or remove it from 'plugins'."
                ) from None
            raise ConfigError(
                f"Plug-in module {name!r} (config key 'plugins') could not be imported: it needs "
                f"the module {err.name!r}, which is not installed. Install it, or remove {name!r} "
                f"from 'plugins'."
            ) from None
        except Exception as err:
            raise ConfigError(
                f"Plug-in module {name!r} (config key 'plugins') failed while being imported: "
                f"{type(err).__name__}: {err}. Fix the module, or remove it from 'plugins'."
            ) from None
