"""Finding leaked sockets and transports: what the garbage collector warns about."""

from __future__ import annotations

import gc
import warnings


def leaked_resources() -> list[str]:
    """Collect garbage now; the ResourceWarnings it raised (unclosed sockets, ...)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    return sorted({str(w.message) for w in caught if issubclass(w.category, ResourceWarning)})
