"""Model runtimes behind one interface: open an artifact as a ``Runner``, then run it.

The inference worker's model host and the registry's validation sandbox both use this
package, so a model is loaded, checked and measured by exactly the code that serves it.
"""

from inference_workers.runtimes.base import (
    Footprint,
    Runner,
    RuntimeLoadError,
    RuntimeOptions,
    Signature,
    measure_footprint,
    open_runner,
    sample_inputs,
)

__all__ = [
    "Footprint",
    "Runner",
    "RuntimeLoadError",
    "RuntimeOptions",
    "Signature",
    "measure_footprint",
    "open_runner",
    "sample_inputs",
]
