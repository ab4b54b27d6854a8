# make book   : set up .venv, provision the embedded model, execute the notebooks into
#               _build/executed/$(PROFILE) (never over the tracked ones), build
#               _build/$(PROFILE)/html (PROFILE=cpu by default; PROFILE=smoke: a quick pass)
# make book JOBS=2 : the same, the chapters after 00_setup in two kernels at a time
# make book RUN=0 : build the book from the published run in results/$(PROFILE)/, no model
# make lab    : set up .venv with JupyterLab and open it on the project's kernel (the venv)
# make test   : set up .venv, run the test suite (unit tests, the embedded model end to end,
#               every notebook in the smoke profile, the book build and a browser check)
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= cpu
RUN     ?= 1
JOBS    ?= 1
# the CPU build that lies on disk here; e.g. TORCH="torch==2.13.0 --index-url ..." for CUDA
TORCH   ?= torch==2.13.0
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.pvutils-installed

SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv model browser book publish test lint strip clean lab

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(PY) -m pip install --quiet $(TORCH)
	@# uv resolves and downloads in parallel: minutes less than pip for the ~150 packages;
	@# torch above goes through pip, which reads this machine's pip config (a local CPU wheel)
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[dev]"
	touch $(STAMP)

model: venv
	$(PY) -m pvutils provision

ifeq ($(RUN),0)
book: venv
	$(PY) -m pvutils book --profile $(PROFILE) --from-results
else
book: model
	$(PY) -m pvutils book --profile $(PROFILE) --jobs $(JOBS)
endif

# copy a finished run (every notebook, one clean commit) to results/$(PROFILE)/ to commit it
publish: venv
	$(PY) -m pvutils publish --profile $(PROFILE)

# JupyterLab (the `lab` extra) from the venv: its python3 kernel is the venv's Python, so
# the notebooks import this checkout's pvutils; LAB_ARGS="--no-browser --port 8899" etc.
LAB_STAMP := $(VENV)/.pvutils-lab
LAB_ARGS ?=
$(LAB_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[lab]"
	touch $(LAB_STAMP)

lab: $(LAB_STAMP) model
	$(VENV)/bin/jupyter lab --notebook-dir=. $(if $(SUDO),,--allow-root) $(LAB_ARGS)

# Debian's Chromium for the browser check of the built book
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# the model and the browser install side by side; then pytest on $(PYTEST_JOBS) workers, a file
# per worker, test_book.py first: the smoke book on one (its chapters two kernels at a time
# after 00_setup), the other files on the other
PYTEST_JOBS ?= 2
test:
	@$(MAKE) --no-print-directory -j2 model browser
	$(PY) -m pytest -q -n $(PYTEST_JOBS) --dist loadfile --no-loadscope-reorder --durations=20 \
		tests/test_book.py tests

lint: venv
	$(VENV)/bin/ruff check pvutils tests benchmarks

# clear notebook outputs before committing them
strip: venv
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb

clean:
	rm -rf _build
