"""Is the data sound: balance, missing values, constant/ID-like/leaky columns, duplicates within and across
splits, outliers and likely label errors (confident learning), with its own recall measured on planted problems.

`dlforge.audit(...)` is `dlforge.audit.run.audit`. Importing a submodule (`dlforge.audit.quick`) binds the name
`audit` on the `dlforge` package to this package rather than to the function, so the package is callable too:
`dlforge.audit(data, target=...)` works whichever came first. scikit-learn and cleanlab are imported on use.
"""

from __future__ import annotations

import sys
import types

from dlforge.audit.run import AuditResult, audit

__all__ = ["AuditResult", "audit"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
