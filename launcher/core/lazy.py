"""Import an object named 'package.module:attr' only when it is needed.

Registries hold these names instead of classes so that validating a config never imports
torch, transformers or Ray (the CLI answers in about a second).
"""

from __future__ import annotations

import importlib
from typing import Any


def load_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module
