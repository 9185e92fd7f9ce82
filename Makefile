# LLM Lab: two commands on a fresh machine.
#   make lab    set up .venv, fetch the offline models, open JupyterLab at chapter 00
#   make test   the same set-up, then the whole test suite (what CI runs)
# Other targets: labs (regenerate labs/), chapters (re-execute chapters at full size),
# lint, doctor, assets, lock, clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.llmlab-installed
START  := chapters/00_start_here/00_start_here.ipynb
# Extra arguments for JupyterLab, e.g. make lab JUPYTER_ARGS="--no-browser --port 8899"
JUPYTER_ARGS ?=
# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# pytest workers: one per core, two at least (notebook tests wait on their kernels).
WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(2, os.cpu_count() or 1))")
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED ?= 0

.PHONY: setup lab test labs chapters lint doctor assets lock clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -c "import sys; assert sys.version_info >= (3, 11), 'LLM Lab needs Python >= 3.11, found ' + sys.version.split()[0]"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.lock
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	$(PY) -m ipykernel install --user --name llmlab --display-name "Python (llmlab)" >/dev/null
	touch $(STAMP)

setup: $(STAMP) assets

assets: $(STAMP)
	$(PY) -m llmlab assets fetch

lab: setup
	$(PY) -m jupyter lab --ServerApp.root_dir=$(CURDIR) $(ROOT_FLAG) $(JUPYTER_ARGS) $(START)

test: setup
	$(PY) -m llmlab doctor
	LLMLAB_SMOKE=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope --durations=15 \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		tests chapters

labs: $(STAMP)
	$(PY) -m llmlab labs

# Re-execute chapter notebooks in place at full size (NB=path to do one), to commit outputs.
chapters: setup
	$(PY) tools/run_chapters.py $(NB)

lint: $(STAMP)
	$(PY) -m ruff format utils tests tools benchmarks
	$(PY) -m ruff check utils tests tools chapters solutions

doctor: $(STAMP)
	$(PY) -m llmlab doctor

# Re-resolve requirements.in in a throw-away virtualenv and write the lock + environment.yml.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --disable-pip-version-check -q -r requirements.in
	.lock-venv/bin/python tools/lock.py .lock-venv/bin/python
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
