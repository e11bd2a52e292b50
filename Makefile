# The two commands of the README:
#   make demo   builds .venv and runs the demo (a tiny random model, spans to ./traceai-traces.jsonl)
#   make test   builds .venv with every test dependency and runs the whole test suite
#   make dist   builds the three packages' wheels and sdists into dist/ (to install elsewhere)
.PHONY: demo test bench dist

demo:
	scripts/setup_env.sh demo
	.venv/bin/python examples/demo.py $(ARGS)

test:
	scripts/setup_env.sh test
	.venv/bin/python -m pytest $(ARGS)

dist:
	scripts/setup_env.sh test
	scripts/build_dist.sh dist

bench:
	scripts/setup_env.sh test
	.venv/bin/python benchmarks/hf_overhead.py $(ARGS)
