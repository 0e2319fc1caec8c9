# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

# torch first (the local CPU build), then the project with pinned versions; Open3D needs libusb.
$(STAMP): setup.py requirements.lock
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
	  echo "installing Debian package libusb-1.0-0 (needed by open3d)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libusb-1.0-0; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements.lock -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/selfpose demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/selfpose bench all

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
