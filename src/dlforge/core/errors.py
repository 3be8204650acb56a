"""The one exception family of dlforge: every error says what went wrong, where, and how to fix it."""

from __future__ import annotations


class DlforgeError(Exception):
    """Base of every error dlforge raises on purpose.

    ``where`` locates the problem (a recipe field path with its YAML line, a file, a data row);
    ``hint`` says how to fix it. The CLI prints them in one or two lines and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class RecipeError(DlforgeError):
    """The recipe is invalid. ``problems`` holds every problem found, not only the first."""

    def __init__(self, problems: list[str] | str, *, hint: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        count = len(self.problems)
        head = "invalid recipe" if count == 1 else f"invalid recipe ({count} problems)"
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head}:\n{body}", hint=hint)


class DataError(DlforgeError):
    """The data cannot be read or does not match the recipe."""


class ModelError(DlforgeError):
    """A model cannot be built from its configuration."""


class ArtifactError(DlforgeError):
    """A run directory is missing, incomplete, or from an unsupported format version."""


class PredictError(DlforgeError):
    """Input given to a Predictor does not match the model's input signature."""


class TrainingInterrupted(DlforgeError):
    """Training stopped on Ctrl-C or SIGTERM after writing a checkpoint; it can be resumed."""

    exit_code = 130

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        super().__init__(
            "training interrupted; a checkpoint was written",
            where=run_dir,
            hint=f"resume with: dlforge train --resume {run_dir}",
        )


class TrainingDiverged(DlforgeError):
    """The training loss (or the weights) became NaN or infinite; the last good checkpoint is kept."""


def did_you_mean(value: str, choices) -> str:
    """' — did you mean 'adam'?' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""
