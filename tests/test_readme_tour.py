"""The README's tour, run as written: every command of its bash blocks, in one shell, from a user's point of view.

The shell gets what a user has after `make demo` and `source .venv/bin/activate`: the venv's bin first on PATH,
and no DLFORGE_DATA (the Makefile's export never reaches a user's shell; the README's own `export` line must set
it). It runs in a temporary copy of the repository's recipes/ and tests/fixtures/ beside a `shared/data` link,
so runs/ and the files the tour writes land there. Skipped commands are listed in SKIPPED with the reason;
`dlforge serve` is started, asked for /healthz, and stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, REPO, needs_data

README = REPO / "README.md"
TOUR = "## A five-minute tour"

# command prefix -> why the test does not run it
SKIPPED = {
    "dlforge train recipes/mnist_cnn.yaml --out runs/cnn2": "waits for a Ctrl-C by hand (tests/test_cli.py sends a real "
                                                            "SIGINT: test_ctrl_c_checkpoints_exits_130_and_resumes)",
    "dlforge train --resume runs/cnn2": "resumes the run interrupted by hand above",
    "dlforge tune recipes/adult_tune.yaml": "a 10-minute search (tests/test_tune.py runs studies, two workers and "
                                            "resume on a tiny table; benchmarks/tune.md measures this one)",
    "dlforge tune --resume tune/adult": "continues the search skipped above",
    "dlforge train recipes/digits.yaml --ray-address local": "starts a local Ray cluster (tens of seconds) "
                                                             "(tests/test_distributed.py runs Ray Train)",
}


def tour_commands(text: str) -> list[str]:
    """Each line of each ```bash block between the tour's heading and the next `## ` heading."""
    section = text.split(TOUR, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_then_stop(command: str, port: int) -> str:
    """`dlforge serve RUN`: in the background on a free port; wait for /healthz (60 s at most), then stop it."""
    probe = (f"import time, urllib.request\n"
             f"for _ in range(240):\n"
             f"    try:\n"
             f"        print(urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=2).read().decode()); break\n"
             f"    except OSError: time.sleep(0.25)\n"
             f"else: raise SystemExit('no /healthz answer in 60 s')\n")
    serve = command.split("#", 1)[0].strip()
    return (f"{serve} --port {port} & server=$!\n"
            f"python -c \"{probe}\" || {{ kill $server; exit 1; }}\n"
            f"kill -TERM $server; wait $server || true")


def test_the_tour_section_has_the_commands_we_expect():
    commands = tour_commands(README.read_text(encoding="utf-8"))
    assert commands[0].startswith("export DLFORGE_DATA="), "the tour must tell the user how to set DLFORGE_DATA"
    assert any(c.startswith("dlforge serve") for c in commands) and len(commands) >= 12
    assert all(any(c.startswith(p) for c in commands) for p in SKIPPED), "SKIPPED names a command the README lost"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 13 CLI runs, each importing torch: minutes on 2 idle cores; under load (~9) it timed out
@needs_data("mnist", "adult", "german_credit")
def test_readme_tour_runs_as_written(tmp_path):
    repo = tmp_path / "dlforge"
    shutil.copytree(REPO / "recipes", repo / "recipes")
    shutil.copytree(REPO / "tests" / "fixtures", repo / "tests" / "fixtures")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(DATA)

    lines = ["set -euo pipefail"]
    for i, command in enumerate(tour_commands(README.read_text(encoding="utf-8"))):
        reason = next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)
        if reason:
            lines.append(f"echo '+++ skipped: {command} ({reason})'")
            continue
        lines.append(f"echo \"+++ {i} (at $SECONDS s): {command.replace(chr(39), '').replace(chr(34), '')}\" >&2")
        lines.append(serve_then_stop(command, free_port()) if command.startswith("dlforge serve") else command)

    env = {k: v for k, v in os.environ.items() if k != "DLFORGE_DATA"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    result = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=1400)
    ran = re.findall(r"^\+\+\+ (\d+) \(at \d+ s\): (.*)$", result.stderr, flags=re.M)
    assert result.returncode == 0, (f"README tour command failed: {ran[-1][1] if ran else '?'}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    assert "Traceback" not in result.stderr
    assert (repo / "runs" / "cnn" / "model.json").is_file() and (repo / "credit.yaml").is_file()
    assert '"status":"ok"' in result.stdout.replace(" ", "")  # the /healthz answer
