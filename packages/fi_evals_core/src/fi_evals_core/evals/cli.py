"""`fi-evals`: run evaluations over a dataset, gate a checkpoint on regressions, write a report.

    fi-evals run data.jsonl --evaluator factual_consistency --map response=summary \
        --map reference=document [--model CHECKPOINT --prompt-column prompt] -o results.jsonl
    fi-evals run 'golden/*.jsonl' ... --ray [ADDRESS] -o v7/   # streamed on Ray into a resumable results folder
    fi-evals compare baseline.jsonl candidate.jsonl --max-delta 0.02 [--by cohort] [--json]   # or folders
    fi-evals report results-a.jsonl results-b.jsonl -o report.html [--by cohort]
    fi-evals run|report ... --label-column human_label [--dev-fraction 0.5]   # agreement with human labels

`run` writes, beside the results, `<results>.run.json`: what generated and scored them (runinfo.py);
`compare` and `report` say what changed between two runs' records (`run --model --repeat 2` adds a
determinism check).

Exit codes: 0 success (and, for `compare`, no regression), 1 `compare` failed the candidate (a
regression, or rows missing from it), 2 a usage or input error (one line on stderr naming what was
wrong; also `compare` refusing results where more than --max-error-rate of the rows errored),
3 `run` scored, but more than --max-error-rate of an evaluation's rows errored (the results are
written; stderr gives the most common cause). The gate fails closed: a typo in a model path, a
device or labels makes every row error, and that is never a pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from .regression import DEFAULT_MAX_ERROR_RATE, BrokenResults, check_error_counts, error_summary

if TYPE_CHECKING:
    from .dataset import Dataset

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, EXIT_ERRORS = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments or input: printed as one line, exit code 2."""

    def __init__(self, message: str, prog: str = "fi-evals") -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fi-evals", description="NLI evaluations over datasets; regression gate; HTML report.")
    parser.add_argument("--version", action="store_true",
                        help="the installed fi-evals-core, traceai-vllm and traceai-huggingface, and whether each is "
                             "this project's (same-named packages on the package index are not)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    run = sub.add_parser("run", help="evaluate a dataset (optionally generating responses with a checkpoint first)")
    run.add_argument("dataset", help="JSONL, JSON, CSV, TSV or Parquet file (or a trace file with --traces)")
    run.add_argument("--evaluator", "-e", action="append", required=True,
                     help="evaluator name(s), comma-separated or repeated: factual_consistency, faithfulness, "
                          "groundedness, task_completion")
    run.add_argument("--map", "-m", action="append", default=[], metavar="INPUT=COLUMN",
                     help="which column feeds an evaluator input, e.g. response=summary (repeatable)")
    run.add_argument("--output", "-o", required=True,
                     help="results file: .jsonl or .parquet; with --ray also a results folder (a path without one "
                          "of those suffixes): DATASET is then streamed (a file, folder or glob), the folder gets "
                          "Parquet parts, and the same command continues an interrupted run")
    run.add_argument("--model", help="generate the responses with this checkpoint (hub id or path) first")
    run.add_argument("--prompt-column", default="prompt", help="prompts for --model (default: prompt)")
    run.add_argument("--response-column", default="response",
                     help="where --model writes its responses (default: response)")
    run.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"),
                     help="generation backend for --model (auto: vLLM when installed)")
    run.add_argument("--max-tokens", type=int, default=128, help="response length cap for --model")
    run.add_argument("--temperature", type=float, default=0.0, help="sampling temperature for --model (0: greedy)")
    run.add_argument("--engine-arg", action="append", default=[], metavar="NAME=VALUE",
                     help="with --model on vLLM: an engine argument (vllm.LLM / EngineArgs), the value read as JSON "
                          "when it is, e.g. max_model_len=2048 or kv_cache_memory_bytes=67108864 (repeatable)")
    run.add_argument("--repeat", type=int, default=1, metavar="N",
                     help="with --model: generate every prompt N times and report the share whose output changed "
                          "between repeats (a determinism check; the first repeat is scored)")
    run.add_argument("--checkpoint", help="label written to every row's checkpoint column "
                                          "(default: the --model value when given)")
    run.add_argument("--nli-model", help="NLI checkpoint (hub id or path); default FI_EVALS_MODEL")
    run.add_argument("--device", help="where the models run: auto, cpu, cuda, cuda:N (default FI_EVALS_DEVICE)")
    run.add_argument("--profile", choices=("auto", "default", "minicheck", "alignscore"),
                     help="scoring recipe of the NLI checkpoint (default FI_EVALS_PROFILE, auto: minicheck for a "
                          "MiniCheck checkpoint, alignscore for an AlignScore .ckpt)")
    run.add_argument("--threshold", type=float, help="pass threshold for every evaluator (default: each one's own)")
    run.add_argument("--batch-size", type=int, default=64, help="rows per scorer call (default 64)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="score on Ray Data: the cluster at ADDRESS, or without one a local Ray on 127.0.0.1 "
                          "(needs fi-evals-core[ray])")
    run.add_argument("--actors", type=int, help="with --ray: scorer actors, one model each "
                                                "(default: one per GPU of the cluster, else one per CPU)")
    run.add_argument("--engines", type=int, help="with --model and --ray and a results folder: vLLM engines, one "
                                                 "actor each (default 1; the scorers get the rest of the cluster)")
    run.add_argument("--rows-per-file", type=int, default=4096,
                     help="with --ray and a results folder: rows per Parquet part (what an interruption can cost "
                          "per part being written; default 4096)")
    run.add_argument("--traces", action="store_true",
                     help="DATASET is a trace file (JSONL spans or OTLP JSON): evaluate captured generations")
    run.add_argument("--sample", type=int, help="with --traces: evaluate a random sample of this many rows")
    run.add_argument("--seed", type=int, default=0, help="seed for --sample and sampling")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--id-column", help="column that identifies each row (written as row_id, which compare pairs "
                                         "rows by); default: a hash of the row's inputs other than the response")
    run.add_argument("--max-error-rate", type=float, default=DEFAULT_MAX_ERROR_RATE,
                     help="exit 3 when more than this share of an evaluation's rows errored (default 0.01)")
    _add_label_options(run)

    cmp = sub.add_parser("compare", help="pass-rate change per evaluation and cohort; exit 1 on a regression")
    cmp.add_argument("baseline", help="results file (or results folder of Parquet parts, as run --ray writes) of the "
                                      "last good checkpoint")
    cmp.add_argument("candidate", help="results file or folder of the checkpoint under test")
    cmp.add_argument("--max-delta", type=float, default=0.02,
                     help="largest tolerated pass-rate drop, as a fraction (default 0.02 = 2 points)")
    cmp.add_argument("--by", action="append", default=[], help="cohort column (repeatable, or comma-separated)")
    cmp.add_argument("--confidence", type=float, default=0.95, help="interval confidence (default 0.95)")
    cmp.add_argument("--evaluation", action="append", help="compare only this evaluation (repeatable)")
    cmp.add_argument("--id-column", help="pair the two sides' rows by this column (default: row_id, written by run)")
    cmp.add_argument("--json", action="store_true", help="print the comparison as JSON")
    cmp.add_argument("--max-error-rate", type=float, default=DEFAULT_MAX_ERROR_RATE,
                     help="refuse (exit 2) results where more than this share of an evaluation's rows errored "
                          "(default 0.01); errored rows below it count as failures")

    rep = sub.add_parser("report", help="one self-contained HTML report from results files or folders")
    rep.add_argument("results", nargs="+", help="results files or folders of Parquet parts (one per checkpoint)")
    rep.add_argument("--output", "-o", required=True, help="HTML file to write")
    rep.add_argument("--by", action="append", default=[], help="cohort column (repeatable, or comma-separated)")
    _add_label_options(rep)
    return parser


def _add_label_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label-column", help="human label column (1/0, true/false, yes/no, pass/fail, "
                                               "supported/unsupported...): the evaluators' agreement with it "
                                               "(balanced accuracy, ROC-AUC, a threshold tuned on a dev split)")
    parser.add_argument("--dev-fraction", type=float, default=0.5,
                        help="with --label-column: share of rows (by a hash of row_id) that tunes the threshold; "
                             "the rest is the test split (default 0.5)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.version:
            from ..installed import describe

            print(describe())
            return 0
        if args.command is None:
            raise UsageError("a command is required: run, compare or report (or --version)", "fi-evals")
        return {"run": cmd_run, "compare": cmd_compare, "report": cmd_report}[args.command](args)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, ImportError, OSError) as exc:
        # bad input: a missing file or column, an unreadable dataset, an unknown evaluator
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fi-evals: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _mapping(pairs: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        key, sep, column = pair.partition("=")
        if not sep or not key.strip() or not column.strip():
            raise UsageError(f"--map {pair!r}: expected INPUT=COLUMN, e.g. response=summary")
        mapping[key.strip()] = column.strip()
    return mapping


def cmd_run(args: argparse.Namespace) -> int:
    from .dataset import Dataset
    from .evaluators import evaluator_class

    if args.sample is not None and not args.traces:
        raise UsageError("--sample needs --traces")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.repeat < 1 or (args.repeat > 1 and not args.model):
        raise UsageError(f"--repeat {args.repeat}: a whole number of at least 1, and more than 1 only with --model")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be from 0 to 1, got {args.threshold}")
    if not 0 <= args.max_error_rate <= 1:
        raise UsageError(f"--max-error-rate must be from 0 to 1, got {args.max_error_rate}")
    _check_dev_fraction(args)
    if args.actors is not None and (args.ray is None or args.actors < 1):
        raise UsageError(f"--actors {args.actors}: a whole number of at least 1, with --ray")
    if args.engines is not None and (args.ray is None or not args.model or args.engines < 1):
        raise UsageError(f"--engines {args.engines}: a whole number of at least 1, with --model and --ray")
    classes = [evaluator_class(name) for name in _split(args.evaluator)]
    mapping = _mapping(args.map)
    known = {name for cls in classes for name in cls.required + cls.optional}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise UsageError(f"--map {unknown[0]}=...: no evaluator chosen takes an input {unknown[0]!r} "
                         f"(inputs: {', '.join(sorted(known))})")
    if args.model and mapping.get("response", args.response_column) != args.response_column:
        raise UsageError(f"--map response={mapping['response']} conflicts with --model: the generated responses "
                         f"are written to column {args.response_column!r} (see --response-column)")
    if Path(args.output).suffix.lower() not in (".jsonl", ".ndjson", ".json", ".parquet"):
        if args.ray is None:
            raise UsageError(f"--output {args.output}: use a .jsonl or .parquet file (a results folder needs --ray)")
        return _run_into_folder(args, mapping)

    dataset = (Dataset.from_traces(args.dataset, sample=args.sample, seed=args.seed) if args.traces
               else Dataset.load(args.dataset))
    if args.id_column:
        if args.id_column not in dataset.columns:
            raise UsageError(f"--id-column {args.id_column}: no such column; columns are {', '.join(dataset.columns)}")
        dataset.id_column = args.id_column
    if args.label_column:  # before scoring: a typo or unreadable labels should not cost a run
        from .agreement import read_labels

        if args.label_column not in dataset.columns:
            raise UsageError(f"--label-column {args.label_column}: no such column; "
                             f"columns are {', '.join(dataset.columns)}")
        read_labels(dataset.rows, args.label_column)
    if dataset.trace_stats is not None:
        s = dataset.trace_stats
        print(f"{args.dataset}: {s['rows']} generation(s) with captured content "
              f"({s['skipped_without_content']} span(s) without content skipped); evaluating {len(dataset)}",
              file=sys.stderr)
    if not len(dataset):
        raise ValueError(f"{args.dataset}: no rows to evaluate")
    if args.model:
        from .generate import generate_responses

        mapping.setdefault("response", args.response_column)
        dataset = generate_responses(dataset, args.model, prompt_column=args.prompt_column,
                                     output_column=args.response_column, max_tokens=args.max_tokens,
                                     temperature=args.temperature, seed=args.seed, backend=args.backend,
                                     device=_generation_device(args.device), checkpoint=args.checkpoint,
                                     progress=not args.no_progress, repeats=args.repeat,
                                     engine_args=_engine_args(args.engine_arg) or None)
    if args.checkpoint:
        dataset.checkpoint = args.checkpoint

    _evaluations(args, dataset, mapping)
    dataset.run(batch_size=args.batch_size, progress=not args.no_progress,
                backend="local" if args.ray is None else "ray", ray_address=args.ray or None, actors=args.actors)
    path = dataset.save(args.output)
    _write_run_record(dataset, path)
    rows = dataset.results or []
    counts = {}
    for name in dataset.evaluation_names:
        scored = [r[f"{name}.passed"] for r in rows if r.get(f"{name}.passed") is not None]
        counts[name] = (len(scored), sum(scored), len(rows) - len(scored))
    broken = _pass_rates(counts, len(rows), lambda name: error_summary(rows, name)[2], args.max_error_rate)
    if args.label_column:
        from .agreement import measure_agreement

        for name in dataset.evaluation_names:
            print(measure_agreement(dataset, name, args.label_column, dev_fraction=args.dev_fraction))
    print(f"wrote {len(dataset)} rows to {path}")
    for message in broken:  # the gate fails closed: a scorer that could not run is not a pass
        print(f"fi-evals: error: {message}", file=sys.stderr)
    return EXIT_ERRORS if broken else EXIT_OK


def _evaluations(args: argparse.Namespace, dataset: "Dataset", mapping: dict[str, str]) -> None:
    """The chosen evaluators attached to `dataset` with their inputs (columns checked there)."""
    from .evaluators import evaluator_class

    nli_model = args.nli_model or os.environ.get("FI_EVALS_MODEL") or None
    for cls in (evaluator_class(name) for name in _split(args.evaluator)):
        inputs = {key: column for key, column in mapping.items() if key in cls.required + cls.optional}
        evaluator = cls(threshold=args.threshold, model=nli_model, device=args.device, profile=args.profile)
        dataset.add_evaluation(evaluator, inputs)


def _run_into_folder(args: argparse.Namespace, mapping: dict[str, str]) -> int:
    """`run --ray -o FOLDER`: the dataset streamed on Ray into a resumable results folder (ray_stream.py),
    its responses generated there first with --model."""
    from itertools import islice

    from .dataset import Dataset
    from .ray_stream import file_rows, input_files, score_files_on_ray
    from ..telemetry.fingerprint import runtime_versions
    from .results_folder import ResultsFolder
    from .runinfo import write_run_info

    for flag, given in (("--sample", args.sample is not None), ("--label-column", args.label_column),
                        ("--repeat", args.repeat > 1),
                        ("--backend transformers", args.model and args.backend == "transformers")):
        if given:
            raise UsageError(f"{flag} is not available with a results folder; write a .jsonl or .parquet output")
    if args.rows_per_file < 1:
        raise UsageError(f"--rows-per-file must be at least 1, got {args.rows_per_file}")
    files = input_files(args.dataset)
    sample = Dataset(islice(file_rows(str(files[0]), args.traces), 100))  # the columns, to check --map, --id-column
    if args.id_column and args.id_column not in sample.columns:
        raise UsageError(f"--id-column {args.id_column}: no such column in {files[0]}; "
                         f"columns are {', '.join(sample.columns)}")
    generate = None
    if args.model:
        mapping.setdefault("response", args.response_column)
        sample.with_column(args.response_column, "")  # generated on Ray
        generate = {"model": args.model, "prompt_column": args.prompt_column, "output_column": args.response_column,
                    "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
                    "actors": args.engines, "engine_kwargs": _engine_args(args.engine_arg)}
    _evaluations(args, sample, mapping)
    run = score_files_on_ray(args.dataset, sample.evaluations, args.output, checkpoint=args.checkpoint,
                             id_column=args.id_column, batch_size=args.batch_size, rows_per_file=args.rows_per_file,
                             address=args.ray or None, actors=args.actors, progress=not args.no_progress,
                             generate=generate, traces=args.traces)
    write_run_info(run.folder, {"versions": runtime_versions(), "generator": run.generation,
                                "scorers": {e.name: e.evaluator.settings() for e in sample.evaluations},
                                "checkpoint": args.checkpoint or args.model})
    broken = _pass_rates(run.evaluations, run.rows, lambda name: ResultsFolder(run.folder).error_cause(name),
                         args.max_error_rate)
    print(f"{run.folder}: {run.rows} rows ({run.written} written by this run, {run.skipped} already there)")
    for message in broken:
        print(f"fi-evals: error: {message}", file=sys.stderr)
    return EXIT_ERRORS if broken else EXIT_OK


def _pass_rates(counts: Mapping[str, tuple[int, int, int]], rows: int, cause: Callable[[str], str | None],
                max_error_rate: float) -> list[str]:
    """Each evaluation's pass-rate line from its (scored, passed, errors); the messages of those with
    more errors than `max_error_rate` allows (the gate fails closed; `cause(name)` asked only then)."""
    broken = []
    for name, (scored, passed, errors) in counts.items():
        rate = f"{passed / scored:.1%}" if scored else "-"
        print(f"{name}: pass rate {rate} of {scored} scored, {errors} error(s)")
        try:
            check_error_counts(errors, rows, lambda name=name: cause(name), name, max_error_rate, "this run")
        except BrokenResults as exc:
            broken.append(str(exc))
    return broken


def _write_run_record(dataset: "Dataset", path: Path) -> None:
    """The run record beside the results (runinfo.py), and the determinism check's verdict."""
    from ..telemetry.fingerprint import runtime_versions
    from .runinfo import scorer_facts, write_run_info

    scorers = {}
    for evaluation in dataset.evaluations:
        scorer = getattr(evaluation.evaluator, "_scorer", None)  # None: it never loaded
        scorers[evaluation.name] = scorer_facts(scorer) if scorer is not None else {"model": None}
    generator = dict(dataset.generation or {})
    determinism = generator.get("determinism")
    if determinism:  # rows as their row ids, which compare and the report name
        ids = [row.get("row_id") for row in dataset.results or []]
        determinism["changed_rows"] = [ids[i] if i < len(ids) else i for i in determinism["changed_rows"]]
        share = determinism["changed"] / max(determinism["prompts"], 1)
        print(f"determinism: {determinism['changed']} of {determinism['prompts']} prompts ({share:.1%}) gave another "
              f"output across {determinism['repeats']} repeats"
              + (f"; rows {', '.join(map(str, determinism['changed_rows'][:10]))}" if determinism["changed"] else ""))
    write_run_info(path, {"versions": runtime_versions(), "generator": generator or None, "scorers": scorers,
                          "checkpoint": dataset.checkpoint})


def _check_dev_fraction(args: argparse.Namespace) -> None:
    if not 0 < args.dev_fraction < 1:
        raise UsageError(f"--dev-fraction must be between 0 and 1 (exclusive), got {args.dev_fraction}")


def _engine_args(pairs: Sequence[str]) -> dict[str, object]:
    """--engine-arg NAME=VALUE pairs; a value that is JSON (a number, true, a list) is read as JSON."""
    parsed: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--engine-arg {pair!r}: expected NAME=VALUE, e.g. max_model_len=2048")
        try:
            parsed[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name.strip()] = value
    return parsed


def _generation_device(device: str | None) -> str | None:
    return None if device in (None, "auto") else device


def cmd_compare(args: argparse.Namespace) -> int:
    from .dataset import compare

    for path in (args.baseline, args.candidate):
        if not Path(path).exists():
            raise UsageError(f"results file not found: {path}")
    comparison = compare(args.baseline, args.candidate, max_delta=args.max_delta, by=_split(args.by) or None,
                         confidence=args.confidence, evaluations=args.evaluation, max_error_rate=args.max_error_rate,
                         id_column=args.id_column)
    print(json.dumps(comparison.to_dict(), indent=2, default=str) if args.json else str(comparison))
    return EXIT_REGRESSION if comparison.failed else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    for path in args.results:
        if not Path(path).exists():
            raise UsageError(f"results file not found: {path}")
    _check_dev_fraction(args)
    from .report import write_report

    path = write_report(list(args.results), args.output, by=_split(args.by) or None, label_column=args.label_column,
                        dev_fraction=args.dev_fraction)
    print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
