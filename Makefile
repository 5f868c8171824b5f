# Two entry points: `make run` and `make test`. Both create .venv when missing and
# reinstall only when requirements.txt changed (the stamp file records that).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501

CHROMIUM := /usr/bin/chromium

.PHONY: run test test-unit test-integration test-e2e test-distributed stress clean

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

# Two test processes side by side (pytest-xdist), a test file kept whole in one of them so its module fixtures are
# built once; each test process and what it starts use one core (tests/conftest.py sets FTLAB_CPUS=1).
TEST_PROCESSES ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/lint-imports
	$(PYTEST)

# The edit-run loop: every unit test (no process started, no server, no fit over a second), under a minute.
test-unit: $(STAMP)
	$(PYTEST) --layer unit

test-integration: $(STAMP)
	$(PYTEST) --layer integration

test-e2e: $(STAMP) $(CHROMIUM)
	$(PYTEST) --layer e2e

test-distributed: $(STAMP)
	$(PYTEST) --layer distributed

# The flakiness check: the e2e, integration and distributed layers ROUNDS times with one core kept busy.
stress: $(STAMP) $(CHROMIUM)
	bash tests/stress.sh $(ROUNDS)

clean:
	rm -rf $(VENV) .pytest_cache
