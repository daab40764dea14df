# The README's two commands are `make demo` and `make test`; both set up .venv first when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.proxylab-installed

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,distributed,service,notebooks]"
	# animal-mnist declares tensorflow, which its data never need: take the data package alone.
	$(BIN)/python -m pip install -q --no-deps "animal-mnist>=0.4"
	touch $(STAMP)

# A second `make demo` resumes the finished run and prints it again instead of refusing the existing folder.
demo: setup
	$(BIN)/proxylab search --bench resnet20-mnist5k --space extended --pop 50 --iters 1000 --seed 0 --out runs/demo $$(test -d runs/demo && echo --resume)

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	for s in benchmarks/[a-z]*.py; do $(BIN)/python $$s || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
