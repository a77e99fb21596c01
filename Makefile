# Two commands: `make test` and `make demo`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/odelt-export: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

.PHONY: test demo clean
test: $(BIN)/odelt-export
	$(BIN)/python -m pytest

demo: $(BIN)/odelt-export
	$(BIN)/odelt-export demo

clean:
	rm -rf $(VENV) build *.egg-info
