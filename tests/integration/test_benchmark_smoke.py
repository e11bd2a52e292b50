"""The transformers overhead benchmark's --replay runs end to end (tiny shapes): it is how the
per-call figures in benchmarks/RESULTS.md are made, so it must not rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_hf_overhead_replay_prints_each_sink_and_mode(model_dirs):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "hf_overhead.py"), "--replay", "--rounds", "1", "--calls", "5",
         "--model-dir", str(model_dirs["llama"])],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(r"^  (in-process \(register\(\)\)|export process)\s+(generate|pipeline)\s+(-?[\d.]+)",
                      result.stdout, re.MULTILINE)
    assert sorted((sink, mode) for sink, mode, _ in rows) == [
        ("export process", "generate"), ("export process", "pipeline"),
        ("in-process (register())", "generate"), ("in-process (register())", "pipeline")]
