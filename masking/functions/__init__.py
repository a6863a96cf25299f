"""Masking functions, registered by name (``get_function("fpe")``).

Adding a function means adding one module here that uses ``@register`` and importing
it below.
"""

from masking.functions.registry import (
    MaskContext,
    MaskFunction,
    Params,
    function_names,
    get_function,
    register,
)
from masking.functions import basic, dates, fake, fpe, generalize, noise, tokens  # noqa: E402,F401  (registers)

__all__ = ["MaskContext", "MaskFunction", "Params", "function_names", "get_function", "register"]
