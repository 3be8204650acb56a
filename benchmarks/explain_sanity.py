"""The model-randomisation check's numbers per method: Spearman rank correlation between each method's map on a
trained run and on the same run with its top layers re-initialised (explain/sanity.py), over test rows.

    PYTHONPATH=src DLFORGE_DATA=../shared/data python benchmarks/explain_sanity.py RUN [--rows 32]

Low means the map depends on what the model learned; at or above 0.5 `dlforge explain` warns.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--rows", type=int, default=32)
    args = parser.parse_args()

    import dlforge
    from dlforge.explain.importance import held_out_table
    from dlforge.explain.methods import valid_methods
    from dlforge.explain.spaces import build_spaces

    predictor = dlforge.load(args.run)
    table = held_out_table(predictor)
    rows = table.take(np.random.default_rng(0).choice(table.n_rows, min(args.rows, table.n_rows), replace=False))
    spaces = build_spaces(predictor.model, predictor.signature, predictor.recipe)
    print(f"{args.run}: {rows.n_rows} test rows")
    print("method                  Spearman mean  min    max    warned  seconds")
    for method in valid_methods(predictor.model, spaces):
        start = time.perf_counter()
        found = dlforge.explain(predictor, rows, method=method)
        per_row = np.asarray(found.sanity["per_row"])
        print(f"{method:<23} {per_row.mean():>13.3f}  {per_row.min():.3f}  {per_row.max():.3f}  "
              f"{'yes' if found.warnings else 'no':<7} {time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
