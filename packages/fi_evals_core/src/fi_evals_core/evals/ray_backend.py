"""Scoring on Ray Data: the batches a local run scores, in a pool of scorer actors.

`Dataset.run(backend="ray")` (and `fi-evals run --ray [ADDRESS]`) hands the prepared results rows
(row ids and checkpoint already written, in the driver) to Ray Data as (index, JSON) records; each
actor of the pool holds one NLI model (one GPU each where the cluster has GPUs, one CPU otherwise)
and scores its batches with the same function the local run calls (`dataset.score_rows`), so a row's
scores, labels and claims are the local run's. The driver merges the result columns back by index,
and checks that every row came back exactly once.

Without an address, Ray is started here, on 127.0.0.1 only, without its dashboard, and stopped at
the end; with one (`127.0.0.1:6379`, `ray://...`, `auto`), the run joins that cluster and leaves it
running. Ray is an extra (`fi-evals-core[ray]`): nothing else in the package imports it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

LOOPBACK = "127.0.0.1"
#: a cluster on this machine talks to nothing else: Ray otherwise replaces a loopback address with the
#: machine's outward one (where a packet to the internet would leave from) and reports usage statistics
LOCAL_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
#: environment the actors need to build the same scorer as the driver would
SHIPPED_ENVIRONMENT = ("FI_EVALS_", "HF_", "TRANSFORMERS_")


def _require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError("scoring on Ray needs Ray Data: pip install 'fi-evals-core[ray]'") from exc
    return ray


def connect(address: str | None = None) -> bool:
    """Join the cluster at `address`, or start a local one bound to 127.0.0.1; True when this
    started Ray (and should stop it)."""
    local = not address or address.split("://")[-1].split(":")[0] in (LOOPBACK, "localhost")
    if local:
        for name, value in LOCAL_ENVIRONMENT.items():  # read by Ray at import: set before it
            os.environ.setdefault(name, value)
    ray = _require_ray()
    if ray.is_initialized():
        return False
    # a driver joining another machine's cluster must be reachable from it: its own address then
    # "local": a Ray of this run's own, never one that happens to run on this machine (ray.init's default)
    ray.init(address=address or "local", _node_ip_address=LOOPBACK if local else None, include_dashboard=False,
             log_to_driver=False)
    return True


def _shippable(evaluation: Any) -> Any:
    """The evaluation without a loaded model: each actor loads its own from the same settings."""
    try:
        evaluator = evaluation.evaluator.unloaded()
    except ValueError as exc:
        raise ValueError(f"evaluation {evaluation.name!r}: {exc}") from None
    return type(evaluation)(evaluation.name, evaluator, dict(evaluation.mapping))


class ScorerActor:
    """One model per actor; called with batches whose `row` column holds each row as JSON, it adds
    a `columns` column (the result columns as JSON) and passes the others through. `score` is the
    local run's `dataset.score_rows` and `default` its JSON encoder for odd values (passed in)."""

    def __init__(self, evaluations: Sequence[Any], environ: Mapping[str, str], score: Callable,
                 default: Callable) -> None:
        os.environ.update(environ)
        self.evaluations = evaluations
        self.score = score
        self.default = default

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [json.loads(text) for text in batch["row"]]
        columns: list[dict[str, Any]] = [{} for _ in rows]
        for evaluation in self.evaluations:
            for out, scored in zip(columns, self.score(evaluation, rows)):
                out.update(scored)
        encoded = np.array([json.dumps(c, ensure_ascii=False, default=self.default) for c in columns], dtype=object)
        return {**{name: np.asarray(values) for name, values in batch.items()}, "columns": encoded}


def pool_size(actors: int | None, resources: Mapping[str, float]) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU where the cluster has GPUs, else one per CPU."""
    gpus = int(resources.get("GPU", 0))
    default = gpus or max(1, int(resources.get("CPU", 1)))
    if actors is not None and actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    return (actors or default), (1.0 if gpus else 0.0)


def scoring_stage(rows: Any, evaluations: Sequence[Any], *, score: Callable, default: Callable, batch_size: int,
                  actors: int | None = None) -> Any:
    """`rows` (a Ray Dataset with a `row` JSON column) mapped through a pool of scorer actors."""
    ray = _require_ray()
    shipped = [_shippable(e) for e in evaluations]
    size, gpus = pool_size(actors, ray.cluster_resources())
    environ = {k: v for k, v in os.environ.items() if k.startswith(SHIPPED_ENVIRONMENT)}
    return rows.map_batches(  # Ray Data restarts a dead actor and retries its batches (its default)
        ScorerActor, fn_constructor_kwargs={"evaluations": shipped, "environ": environ, "score": score,
                                            "default": default},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1,
        num_gpus=gpus)


def score_on_ray(results: list[dict[str, Any]], evaluations: Sequence[Any], *, score: Callable,
                 default: Callable, batch_size: int, address: str | None = None, actors: int | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Score `results` (prepared rows, updated in place and returned) on Ray Data, each batch with
    `score(evaluation, rows)` in an actor; `default` encodes what JSON cannot."""
    for evaluation in evaluations:  # refused before a cluster starts
        _shippable(evaluation)
    ray = _require_ray()
    started = connect(address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        records = [{"index": i, "row": json.dumps(row, ensure_ascii=False, default=default)}
                   for i, row in enumerate(results)]
        scored = scoring_stage(ray.data.from_items(records), evaluations, score=score, default=default,
                               batch_size=batch_size, actors=actors)
        seen = [False] * len(results)
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            for index, encoded in zip(batch["index"], batch["columns"]):
                index = int(index)
                if seen[index]:
                    raise RuntimeError(f"Ray returned row {index} twice")
                seen[index] = True
                results[index].update(json.loads(encoded))
        missing = seen.count(False)
        if missing:
            raise RuntimeError(f"Ray returned {len(results) - missing} of {len(results)} rows")
        return results
    finally:
        if started:
            ray.shutdown()
