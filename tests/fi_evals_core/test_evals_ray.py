"""Scoring on Ray Data, on a real local Ray cluster (a head and two one-CPU worker nodes, all on
127.0.0.1, started and stopped by Ray's own `cluster_utils.Cluster`): the same rows as a local run."""

from __future__ import annotations

import os

import pytest

from fi_evals_core.evals import FactualConsistency, NLIScorer
from fi_evals_core.evals.dataset import INPUT_ERROR, Dataset
from fi_evals_core.evals.ray_backend import LOCAL_ENVIRONMENT
from tests.fi_evals_core.test_evals_dataset import DOCS

# Before Ray is imported, which reads them once: loopback stays loopback, no usage reports
for _name, _value in LOCAL_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
import ray  # noqa: E402  (installed by the test set-up: fi-evals-core[ray])


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **loopback})
    for _ in range(2):
        cluster.add_node(num_cpus=1, **loopback)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _rows(copies: int) -> list[dict]:
    rows = [{"document": doc, "summary": summary, "topic": topic, "copy": k}
            for k in range(copies) for doc, summary, topic in DOCS]
    rows.append({"document": "x", "summary": "y", "topic": "bad", "copy": -1, INPUT_ERROR: "line 99: not JSON"})
    return rows


def _dataset(rows, model: str) -> Dataset:
    return Dataset(rows, checkpoint="ckpt-a").add_evaluation(
        FactualConsistency(model=model, device="cpu"), {"reference": "document", "response": "summary"}, name="fc")


def _same(a, b) -> bool:
    """Equal, floats to 1e-6, through lists and dicts."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_node_of_the_cluster_is_on_loopback(cluster):
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}
    assert sorted(n["Resources"].get("CPU", 0) for n in nodes) == [0, 1, 1]


def test_ray_run_gives_every_row_the_local_runs_results_once(cluster, nli_checkpoint):
    """Two actors (one per worker node) against one local scorer, fp32 on the CPU: every row, in
    order, with the same row id, verdict, label, claims and scores (to 1e-6), the malformed row an
    error row, none lost or repeated."""
    model = nli_checkpoint("bert")
    rows = _rows(copies=6)
    local = _dataset(rows, model).run(batch_size=8, progress=False)
    remote = _dataset(rows, model).run(batch_size=8, progress=False, backend="ray", actors=2)
    assert len(remote) == len(local) == len(rows)
    assert [r["row_id"] for r in remote] == [r["row_id"] for r in local]
    assert len({r["row_id"] for r in remote}) == len(rows)
    scored = 0
    for mine, theirs in zip(remote, local):
        assert set(mine) == set(theirs)
        for key in ("fc.passed", "fc.label", "fc.error_type", "topic", "copy", "checkpoint"):
            assert mine.get(key) == theirs.get(key), key
        if theirs["fc.score"] is None:
            assert mine["fc.score"] is None
            continue
        scored += 1
        assert _same(mine["fc.score"], theirs["fc.score"])
        assert _same(mine["fc.claims"], theirs["fc.claims"])  # texts, evidence chunks, probabilities
    assert scored >= 30
    assert remote[-1]["fc.error_type"] == "InputError"


def test_bad_ray_settings_are_refused_by_name(cluster, nli_checkpoint):
    rows = _rows(copies=1)
    with pytest.raises(ValueError, match="actors must be at least 1"):
        _dataset(rows, nli_checkpoint("bert")).run(progress=False, backend="ray", actors=0)
    with pytest.raises(ValueError, match="backend must be"):
        _dataset(rows, nli_checkpoint("bert")).run(progress=False, backend="spark")
    given = NLIScorer.from_pretrained(nli_checkpoint("bert"), device="cpu")
    dataset = Dataset(rows).add_evaluation(FactualConsistency(scorer=given), {"reference": "document",
                                                                              "response": "summary"})
    with pytest.raises(ValueError, match="given a scorer object"):
        dataset.run(progress=False, backend="ray")


def test_cli_run_with_ray_starts_a_loopback_ray_and_writes_the_local_results(tmp_path, nli_checkpoint):
    """`fi-evals run --ray --actors 2` with no address: a Ray of its own on 127.0.0.1 (in the CLI's
    process, stopped at its end), the same results file as a local run; --actors without --ray is
    refused before anything runs."""
    import json

    from tests.fi_evals_core.test_evals_cli import fi_evals

    data = tmp_path / "golden.jsonl"
    data.write_text("".join(json.dumps({"document": d, "summary": s, "topic": t}) + "\n" for d, s, t in DOCS * 3))
    env = {"FI_EVALS_MODEL": nli_checkpoint("bert"), "FI_EVALS_DEVICE": "cpu"}
    common = ["run", data, "-e", "factual_consistency", "--map", "reference=document", "--map", "response=summary",
              "--batch-size", "4", "--no-progress", "--max-error-rate", "0.2"]  # DOCS has an empty summary
    local = fi_evals(*common, "-o", tmp_path / "local.jsonl", env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    remote = fi_evals(*common, "--ray", "--actors", "2", "-o", tmp_path / "ray.jsonl", env=env)
    assert remote.returncode == 0, remote.stderr[-2000:]
    mine = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert len(mine) == len(theirs) == len(DOCS) * 3
    assert all(_same(a, b) for a, b in zip(mine, theirs))
    refused = fi_evals(*common, "--actors", "2", "-o", tmp_path / "x.jsonl", env=env)
    assert refused.returncode == 2 and "--actors 2" in refused.stderr and not (tmp_path / "x.jsonl").exists()


def test_nothing_but_the_ray_backend_imports_ray():
    """Ray is an extra: the packages, the evaluators, the CLI and both instrumentors load without it."""
    import subprocess
    import sys

    code = ("import sys, fi_evals_core, fi_evals_core.evals, fi_evals_core.evals.dataset, fi_evals_core.evals.cli, "
            "traceai_vllm, traceai_huggingface; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
