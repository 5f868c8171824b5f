# Two entry points: `make run` and `make test`. Both create .venv when missing and
# reinstall only when requirements.txt changed (the stamp file records that).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

CHROMIUM := /usr/bin/chromium

.PHONY: run test test-fast clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	cp requirements.txt $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT)

# The end-to-end tests drive Debian's Chromium through Playwright (Playwright's own browser download is not
# reachable from every machine); installed once, with the package lists refreshed only when the first try fails.
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

test-fast: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache
