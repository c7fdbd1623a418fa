# criplex: `make up` runs the runtime, `make test` proves it. Both start from a fresh Debian 12 root machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# What criplex needs on the host to run containers, images and pod networks.
APT_RUNTIME := runc conmon containernetworking-plugins iproute2 iptables
# What the tests need on top: a real registry, busybox to build images from, tools for auth/TLS fixtures.
APT_TEST := $(APT_RUNTIME) docker-registry busybox-static apache2-utils openssl zstd
# The reference runtime the benchmarks compare with.
APT_BENCH := $(APT_TEST) containerd

.PHONY: up test lint venv deps-runtime deps-test deps-bench proto bench clean-venv

up: deps-runtime venv
	$(VENV)/bin/criplex up

test: deps-test venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

lint: venv
	$(PY) -m ruff check .

bench: deps-bench venv
	$(PY) -m bench

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Debian's own python3 makes venvs only with python3-venv (ensurepip) installed.
	@python3 -c 'import ensurepip' 2>/dev/null || deploy/install-packages.sh python3-venv
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Install only what is missing (apt-get update is slow and needs the network); a package
# this Debian release lacks is named and stops the build.
deps-runtime:
	@deploy/install-packages.sh $(APT_RUNTIME)

deps-test:
	@deploy/install-packages.sh $(APT_TEST)

deps-bench:
	@deploy/install-packages.sh $(APT_BENCH)

proto: venv
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. shared/cri/api.proto

clean-venv:
	rm -rf $(VENV)
