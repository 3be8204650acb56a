"""Why a model decides: attributions (Captum) for images, text, tables and mixes, with the model-randomisation
sanity check run beside every map. Reads a run directory; imports nothing above `artifact`.

`dlforge.explain(run, inputs, method=...)` calls `explain.api.explain`. The package shares the public
function's name, and Python binds a package to its parent's attribute on import, so the package itself is
made callable (a module subclass with `__call__`): `dlforge.explain(...)` works whichever was bound first.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from dlforge.explain.api import explain

        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
