"""Scoring on Ray Data: the batches a local run scores, in a pool of scorer actors.

`Dataset.run(backend="ray")` (and `fi-evals run --ray [ADDRESS]`) hands the prepared results rows
(row ids and checkpoint already written, in the driver) to Ray Data as (index, JSON) records. Two
stages run the two halves of the local run's `dataset.score_rows`, so a row's scores, labels and
claims are the local run's: CPU tasks check each row's inputs and cut it into claims and premise
chunks (`dataset.plan_rows`: the tokenizer, no model), then a pool of scorer actors, each holding one
NLI model (one GPU each where the cluster has GPUs, one CPU otherwise), scores the plans
(`dataset.scored_columns`). The driver merges the result columns back by index, and checks that
every row came back exactly once.

Without an address, Ray is started here, on 127.0.0.1 only, without its dashboard, and stopped at
the end; with one (`127.0.0.1:6379`, `ray://...`, `auto`), the run joins that cluster and leaves it
running. Ray is an extra (`fi-evals-core[ray]`): nothing else in the package imports it.
"""

from __future__ import annotations

import json
import os
import pickle
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


def plan_batch(batch: Mapping[str, Any], evaluations: Sequence[Any], environ: Mapping[str, str],
               plan: Callable) -> dict[str, Any]:
    """The planning stage (a CPU task): each row of the `row` JSON column planned for every evaluation
    with `plan` (the local run's `dataset.plan_rows`), added as a pickled `plans` column."""
    import numpy as np

    os.environ.update(environ)  # the evaluators' model settings (FI_EVALS_*), as the driver has them
    rows = [json.loads(text) for text in batch["row"]]
    per_row: list[dict[str, Any]] = [{} for _ in rows]
    for evaluation in evaluations:
        for out, planned in zip(per_row, plan(evaluation, rows)):
            out[evaluation.name] = planned
    plans = np.array([pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL) for p in per_row], dtype=object)
    return {**{name: np.asarray(values) for name, values in batch.items()}, "plans": plans}


class ScorerActor:
    """One model per actor; called with batches whose `plans` column holds each row's plans (from
    `plan_batch`), it adds a `columns` column (the result columns as JSON), drops `plans` and passes the
    other columns through. `score` is the local run's `dataset.scored_columns` and `default` its JSON
    encoder for odd values (passed in: `dataset` imports this module, never the other way)."""

    def __init__(self, evaluations: Sequence[Any], environ: Mapping[str, str], score: Callable,
                 default: Callable) -> None:
        os.environ.update(environ)
        self.evaluations = evaluations
        self.score = score
        self.default = default

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        plans = [pickle.loads(data) for data in batch["plans"]]
        columns: list[dict[str, Any]] = [{} for _ in plans]
        for evaluation in self.evaluations:
            for out, scored in zip(columns, self.score(evaluation, [p[evaluation.name] for p in plans])):
                out.update(scored)
        encoded = np.array([json.dumps(c, ensure_ascii=False, default=self.default) for c in columns], dtype=object)
        passed = {name: np.asarray(values) for name, values in batch.items() if name != "plans"}
        return {**passed, "columns": encoded}


def pool_size(actors: int | None, resources: Mapping[str, float]) -> tuple[int, float]:
    """(actors, GPUs per actor): one per GPU where the cluster has GPUs, else one per CPU."""
    gpus = int(resources.get("GPU", 0))
    default = gpus or max(1, int(resources.get("CPU", 1)))
    if actors is not None and actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    return (actors or default), (1.0 if gpus else 0.0)


def scoring_stage(rows: Any, evaluations: Sequence[Any], *, plan: Callable, score: Callable, default: Callable,
                  batch_size: int, actors: int | None = None, held_cpus: int = 0) -> Any:
    """`rows` (a Ray Dataset with a `row` JSON column) planned in CPU tasks, then scored by a pool of
    scorer actors.

    The planning tasks hold a CPU each where the actors leave CPUs free (a GPU cluster, or fewer
    actors than CPUs); where the actors hold every CPU (the CPU-only default, one actor per CPU) they
    hold none, else they would never be scheduled, and share the actors' cores (their tokenizer work
    is a small part of a row's cost). `held_cpus`: CPUs that other actors of the pipeline hold (the
    generation engines)."""
    ray = _require_ray()
    shipped = [_shippable(e) for e in evaluations]
    resources = ray.cluster_resources()
    size, gpus = pool_size(actors, resources)
    free_cpus = int(resources.get("CPU", 0)) - size - held_cpus
    environ = {k: v for k, v in os.environ.items() if k.startswith(SHIPPED_ENVIRONMENT)}
    planned = rows.map_batches(
        plan_batch, fn_kwargs={"evaluations": shipped, "environ": environ, "plan": plan}, batch_size=batch_size,
        batch_format="numpy", num_cpus=1 if free_cpus >= 1 else 0,
        concurrency=max(1, free_cpus if free_cpus >= 1 else int(resources.get("CPU", 1))))
    # Ray Data restarts a dead actor and retries its batches (its default). Two batches in flight per
    # actor, one scoring and the next one waiting: a batch is seconds of work, and with more queued at
    # one actor (Ray Data prefers the actor on the node that holds the block) another can sit idle.
    pool = ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2)
    return planned.map_batches(
        ScorerActor, fn_constructor_kwargs={"evaluations": shipped, "environ": environ, "score": score,
                                            "default": default},
        batch_size=batch_size, batch_format="numpy", compute=pool, num_cpus=1, num_gpus=gpus)


def score_on_ray(results: list[dict[str, Any]], evaluations: Sequence[Any], *, plan: Callable, score: Callable,
                 default: Callable, batch_size: int, address: str | None = None, actors: int | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Score `results` (prepared rows, updated in place and returned) on Ray Data, each batch planned
    with `plan(evaluation, rows)` in a CPU task and scored with `score(evaluation, plans)` in an actor;
    `default` encodes what JSON cannot."""
    for evaluation in evaluations:  # refused before a cluster starts
        _shippable(evaluation)
    ray = _require_ray()
    started = connect(address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        records = [{"index": i, "row": json.dumps(row, ensure_ascii=False, default=default)}
                   for i, row in enumerate(results)]
        scored = scoring_stage(ray.data.from_items(records), evaluations, plan=plan, score=score, default=default,
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
