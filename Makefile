# The two commands of the README: `make demo` (the main job) and `make test`. Both create .venv on first use.
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean-venv

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/trl-esr demo $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q $(ARGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m benchmarks.step_time $(ARGS)

# The paper-shape benchmark (docs/benchmarks.md): the paper's pair on one CUDA GPU; ARGS="--shapes tiny" on CPU.
.PHONY: bench-paper
bench-paper: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m benchmarks.paper_shape $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
