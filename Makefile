# Set-up and checks. `make test` works on a fresh machine: it creates .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export RAY_AUTH_MODE := disabled

.PHONY: test benchmarks clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later can pull a different build
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip show torch | grep -q '^Version: 2.14.1' || (echo "torch is not 2.14.1" && exit 1)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

benchmarks: $(STAMP)
	$(PY) benchmarks/model_step.py

clean-venv:
	rm -rf $(VENV)
