# Every target runs on the embedded sample photos by default; point them at real data with DATA (any image
# folder), COCO (train2017/ + val2017/) and TEST_DATA, e.g. `make demo COCO=/data/coco TEST_DATA=/data/kodak`;
# scripts/env.sh lists the other variables of the phase targets.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
PYTEST_WORKERS ?= 2
# The demo: bmshj2018-factorized (quality 1 size) at 3 λ with Adam on the embedded sample photos. A shared
# warm start followed by a short fine-tune per λ converges within a CPU budget (a from-scratch run per λ
# is limited by training time, not λ, and gives a non-monotone curve).
DEMO_FLAGS ?= --out_dir runs/demo --name demo-bmshj2018-factorized-adam --lambdas 0.0009,0.0035,0.013 \
	--warm_start_steps 400 --warm_start_lr 1e-3 --steps 160 --lr 5e-4 --lr_warmup_steps 20 --sched cosine --batch_size 8 \
	--patch_size 96 --num_workers 0 --recon_every 0 --val_every 1000
# The same data variables as the phase scripts (scripts/env.sh), for the demo.
DATA_FLAGS = $(if $(DATA),--train_dataset $(DATA)) $(if $(TEST_DATA),--test_dataset $(TEST_DATA)) \
	$(if $(COCO),--coco_dir $(COCO))

.PHONY: setup test demo bench clean-venv help phase1-standard phase1-balanced phase1-hparam \
	phase2-adaptive phase2-finetune phase2-optuna phase2-npu-relu phase2-npu-gdnish phase2-npu-qat \
	phase2-npu-distill phase2-npu-export phase3-hierarchical phase3-ablation phase4-bdrate phase4-eval

help:
	@echo "make demo   - train 3 lambda points on the embedded samples, evaluate with real bitstreams, plot"
	@echo "make test   - run the test suite"
	@echo "make bench  - print the benchmarks' side-by-side ratios"
	@echo "make setup  - create .venv with the pinned dependencies (done by the targets above)"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

phase1-standard: setup
	phase1/run_standard.sh
phase1-balanced: setup
	phase1/run_balanced.sh
phase1-hparam: setup
	phase1/run_hparam_search.sh
phase2-adaptive: setup
	phase2/run_balanced_adaptive.sh
phase2-finetune: setup
	phase2/run_finetune.sh
phase2-optuna: setup
	phase2/run_optuna.sh
phase2-npu-relu: setup
	phase2/npu/run_relu_encoder.sh
phase2-npu-gdnish: setup
	phase2/npu/run_gdnish_all.sh
phase2-npu-qat: setup
	phase2/npu/run_qat.sh
phase2-npu-distill: setup
	phase2/npu/run_distill.sh
phase2-npu-export: setup
	phase2/npu/run_export.sh
phase3-hierarchical: setup
	phase3/run_hierarchical.sh
phase3-ablation: setup
	phase3/run_ablation_gamma.sh
phase4-bdrate: setup
	phase4/run_bdrate.sh
phase4-eval: setup
	phase4/run_eval_checkpoints.sh

demo: setup
	$(PY) -m baselines.sweep $(DEMO_FLAGS) $(DATA_FLAGS)

bench: setup
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.optimizer_step
	$(PY) -m benchmarks.codec_speed
	$(PY) -m benchmarks.hpcm_speed
	$(PY) -m benchmarks.npu_blocks

clean-venv:
	rm -rf $(VENV)
