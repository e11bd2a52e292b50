# The two commands of the README:
#   make demo   builds .venv and runs the demo (a tiny random model, spans to ./traceai-traces.jsonl)
#   make test   builds .venv with every test dependency and runs the whole test suite
.PHONY: demo test bench

demo:
	scripts/setup_env.sh demo
	.venv/bin/python examples/demo.py $(ARGS)

test:
	scripts/setup_env.sh test
	.venv/bin/python -m pytest $(ARGS)

bench:
	scripts/setup_env.sh test
	.venv/bin/python benchmarks/hf_overhead.py $(ARGS)
