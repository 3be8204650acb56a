"""Recipe section `evaluation`: fairness by group, post-processing mitigation and probability calibration.

All of it runs after training, on the validation split (fitting) and the test split (scoring), so it never
changes the weights: temperature scaling and group thresholds are small JSON records beside them in model.json.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401

from dlforge.recipe._base import Strict, _field  # noqa: F401


class MitigateConfig(Strict):
    method: Literal["threshold_optimizer"] = _field(
        "threshold_optimizer", "fairlearn's ThresholdOptimizer (Hardt et al. 2016): one (randomised) threshold per "
        "group on the positive probability, fitted on the validation split.")
    constraint: Literal["demographic_parity", "equalized_odds", "true_positive_rate_parity",
                        "false_positive_rate_parity"] = _field(
        "demographic_parity", "The parity the thresholds enforce (fairlearn's `constraints`).")
    by: list[str] = _field(
        [], "The sensitive columns whose groups get their own thresholds (their combinations when several); empty: "
        "all of evaluation.sensitive. Each must be a category input of the model, since predict and serve need it.")
    seed: int = _field(0, "Seed of the randomised choice between a group's two thresholds (the same rows give the "
                          "same predictions every time).", ge=0, le=2**31 - 1)


class EvaluationConfig(Strict):
    sensitive: list[Annotated[str, Field(min_length=1)]] = _field(
        [], "Columns to measure fairness over, e.g. [sex, race]: per-group accuracy, selection rate, TPR, FPR and "
        "calibration error, and the demographic-parity and equalised-odds differences and ratios. They need not be "
        "model inputs. Needs a binary or category output.")
    mitigate: MitigateConfig | Literal["threshold_optimizer"] | None = _field(
        None, "Post-processing mitigation: `threshold_optimizer` (or {method, constraint, by, seed}). Needs a binary "
        "output; the thresholds are stored in model.json and applied by predict and serve.")
    calibrate: Literal["temperature"] | None = _field(
        None, "`temperature`: temperature scaling (Guo et al. 2017) fitted on the validation split; predict_proba "
        "and serve return the scaled probabilities.")
    min_group_rows: int = _field(
        30, "Groups with fewer scored rows are listed but left out of the disparities (a group of 4 rows would decide "
        "a max - min difference by noise); 0 keeps every group.", ge=0)
    ece_bins: int = _field(15, "Equal-width probability bins of the expected calibration error and the reliability "
                               "diagram.", ge=2, le=100)
    mistakes: int = _field(10, "How many of the worst test mistakes (highest loss) the report lists.", ge=0, le=100)

    @model_validator(mode="after")
    def _mitigate_as_object(self):
        if isinstance(self.mitigate, str):
            object.__setattr__(self, "mitigate", MitigateConfig(method=self.mitigate))
        return self


__all__ = ["EvaluationConfig", "MitigateConfig"]
