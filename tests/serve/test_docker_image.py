"""The Docker image can read its model as the non-root user it runs as, whatever the modes of the source files.

Docker's daemon is not available to the test suite, so the image's layout is simulated from the
Dockerfile itself: its runtime stage's user id, the COPY of the run directory (sources, --chown,
--chmod; COPY keeps the source modes unless --chmod is given) and the ENTRYPOINT's run directory. The
files are laid out that way and loaded by a forked child that dropped to that uid (so the test needs
root, and is skipped otherwise). Before the fix, model.safetensors was written 0600 and copied as
root-owned 0600: the image's user could not read its own weights.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import stat
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def runtime_stage(text: str) -> list[str]:
    """The last stage's instructions, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    start = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[start:]


def image_layout(stage: list[str]) -> dict:
    """What the runtime stage does with the run directory: uid, COPY flags and sources, destination, served dir."""
    uid = int(re.search(r"useradd\b.*--uid[ =](\d+)", next(x for x in stage if "useradd" in x)).group(1))
    run_dir_default = next(x for x in stage if x.startswith("ARG RUN_DIR")).split("=", 1)[1]
    copy = next(x for x in stage if x.startswith("COPY") and "${RUN_DIR}" in x)
    words = shlex.split(copy)[1:]
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    entry = json.loads(next(x for x in stage if x.startswith("ENTRYPOINT"))[len("ENTRYPOINT"):])
    served = entry[entry.index("serve") + 1]
    return {"uid": uid, "run_dir_default": run_dir_default, "flags": flags,
            "sources": [p.replace("${RUN_DIR}/", "") for p in paths[:-1]], "dest": paths[-1], "served": served}


def test_dockerfile_copies_the_model_readable_and_runs_as_non_root():
    stage = runtime_stage(DOCKERFILE.read_text(encoding="utf-8"))
    layout = image_layout(stage)
    assert layout["uid"] != 0 and any(x.startswith("USER ") and x.split()[1] != "root" for x in stage)
    assert layout["dest"].rstrip("/") == layout["served"]
    assert {"model.json", "model.safetensors"} <= set(layout["sources"])
    # Readable by everyone, whatever the source modes (a run written 0600, or under umask 077).
    mode = int(layout["flags"].get("chmod", "0"), 8)
    assert mode & stat.S_IROTH, "COPY of the run directory needs --chmod giving read access to the image's user"


def _lay_out(run_dir: Path, root: Path, layout: dict) -> Path:
    """The files where the image has them, with the modes and owners COPY gives them."""
    dest = root / layout["dest"].strip("/")
    dest.mkdir(parents=True)
    for parent in [dest, *dest.relative_to(root).parents]:
        os.chmod(root / parent, 0o755)  # directories COPY creates are 0755
    chmod = layout["flags"].get("chmod")
    owner = layout["flags"].get("chown", "root:root").split(":")[0]
    assert owner in ("root", "0"), "the test knows root-owned copies only"
    for pattern in layout["sources"]:
        for source in glob.glob(str(run_dir / pattern)):
            target = dest / Path(source).name
            shutil.copy2(source, target)  # COPY keeps the mode bits ...
            if chmod:
                os.chmod(target, int(chmod, 8))  # ... unless --chmod says otherwise
            os.chown(target, 0, 0)
    return dest


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="dropping to the image's uid needs root")
def test_the_image_user_loads_the_model(digits_run, digits_predictor, tmp_path_factory):
    import tempfile

    import dlforge

    layout = image_layout(runtime_stage(DOCKERFILE.read_text(encoding="utf-8")))
    run = tmp_path_factory.mktemp("docker") / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("checkpoint", "plots"))
    for path in run.iterdir():
        os.chmod(path, 0o600)  # the most private source modes: the image must not depend on them
    root = Path(tempfile.mkdtemp(prefix="dlforge-image-"))
    try:
        os.chmod(root, 0o755)
        served = _lay_out(run, root, layout)
        assert {p.name for p in served.iterdir()} >= {"model.json", "model.safetensors", "metrics.json", "recipe.yaml"}
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: become the image's user, then do what `dlforge serve` does at start
            status = 1
            try:
                os.close(reader)
                os.setgroups([])
                os.setgid(layout["uid"])
                os.setuid(layout["uid"])
                predictor = dlforge.load(served)
                for name in os.listdir(served):
                    (served / name).read_bytes()
                message, status = f"loaded {predictor.name} as uid {os.getuid()}", 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
                message = f"{type(exc).__name__}: {exc}"
            os.write(writer, message.encode()[:4000])
            os._exit(status)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            message = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, message
        assert message == f"loaded {digits_predictor.name} as uid {layout['uid']}"
    finally:
        shutil.rmtree(root, ignore_errors=True)
