# dockyard: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need (apt + a virtualenv in .venv) on a fresh
# Debian/Ubuntu machine, as root.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := busybox-static runc containerd docker-registry skopeo umoci \
	debootstrap libseccomp2 iproute2 nftables apache2-utils python3-venv \
	ca-certificates
PYTEST_ARGS ?=

.PHONY: deps apt venv compile demo test unit lint bench clean

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "dockyard needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

deps: apt venv

# Byte-compile up front: start-up time matters (dockyard-runc, the shim) and
# PYTHONDONTWRITEBYTECODE may be set in the environment.
compile: venv
	@$(PY) -m compileall -q dockyard >/dev/null

demo: deps compile
	$(PY) -m dockyard.demo

test: deps compile
	$(PY) -m ruff check dockyard tests bench
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check dockyard tests bench

bench: deps compile
	$(PY) bench/runc_run.py
	$(PY) bench/ctr_run.py
	@echo "pull benchmark (downloads a Debian base once): $(PY) bench/pull.py"

clean:
	rm -rf $(VENV) build *.egg-info
