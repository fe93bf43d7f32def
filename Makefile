# Every target runs on the embedded sample photos by default; point them at real data with DATA (any image
# folder), COCO (train2017/ + val2017/) and TEST_DATA, e.g. `make demo COCO=/data/coco TEST_DATA=/data/kodak`;
# scripts/env.sh lists the other variables of the phase targets.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
PYTEST_WORKERS ?= 2
DEMO_DIR ?= runs/demo
# Study bundles that `make phase4` renders (folders with a summary.json written by baselines.compare).
STUDIES ?= $(patsubst %/summary.json,%,$(wildcard results/*/summary.json))

.PHONY: setup test demo pretrain gpu-check study-scratch study-finetune study-hierarchical study-arms study-qp study-npu study-budget phase4 bench clean-venv help \
	phase1-standard phase1-balanced phase1-hparam \
	phase2-adaptive phase2-finetune phase2-optuna phase2-npu-relu phase2-npu-gdnish phase2-npu-qat \
	phase2-npu-distill phase2-npu-export phase3-hierarchical phase3-ablation phase4-bdrate phase4-eval

help:
	@echo "make demo   - Adam vs Balanced R-D at 5 lambdas from the shipped base model, real bitstreams, JPEG/WebP anchors"
	@echo "make test   - run the test suite"
	@echo "make pretrain - train the demo's base model (about 1.5 h on one core); BASE=hpcm-tiny: phase 3's (about 14 min)"
	@echo "make study-arms - study 4: Adam, Balanced and the arms between them, 8 seeds x 4 λ, intervals (results/study-arms)"
	@echo "make study-qp - study 5: the exact QP's predicted vs realised log-loss changes, plain Adam, low lr, ridges"
	@echo "make study-budget - study 7: Adam vs Balanced from scratch at 5/10/25/50/100 % of the budget, 8 seeds x 4 λ"
	@echo "make study-npu - study 6: what each NPU-friendly replacement and QAT costs from the trained base (results/study-npu)"
	@echo "make study-scratch study-finetune study-hierarchical - the committed studies (results/)"
	@echo "make phase4 - tables, figures and an HTML page for every study in results/ (into reports/)"
	@echo "make bench  - print the benchmarks' side-by-side ratios"
	@echo "make gpu-check - on a GPU machine: CUDA tests, throughput, Balanced step cost, a short from-scratch run"
	@echo "make setup  - create .venv with the pinned dependencies (done by the targets above)"

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
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

# The demo is phase 4's comparison with its defaults (phase4/run_bdrate.sh): DATA, TEST_DATA, COCO and the
# other variables of scripts/env.sh apply to it too.
demo: setup
	CMP_DIR=$(DEMO_DIR) TITLE="make demo: Adam vs Balanced R-D" phase4/run_bdrate.sh

# One thread, as the shipped base model was made (thread count changes the float summation order).
pretrain: setup
	OMP_NUM_THREADS=1 $(PY) -m baselines.pretrain $(if $(BASE),--base $(BASE))

study-scratch: setup
	phase4/study_scratch.sh
study-finetune: setup
	phase4/study_finetune.sh
study-hierarchical: setup
	phase3/study_hierarchical.sh
study-arms: setup
	phase4/study_arms.sh
study-qp: setup
	phase4/study_qp.sh
study-npu: setup
	phase2/study_npu.sh
study-budget: setup
	phase4/study_budget.sh

phase4: setup
	$(if $(STUDIES),$(PY) -m common.report $(STUDIES) --out_dir reports,@echo "no study in results/ (run make study-scratch first)" >&2; exit 2)

# On a machine with a GPU: the CUDA tests, throughput, Balanced's step cost and a short run (benchmarks/gpu_check.py).
gpu-check: setup
	$(PY) -m benchmarks.gpu_check

bench: setup
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.optimizer_step
	$(PY) -m benchmarks.codec_speed
	$(PY) -m benchmarks.hpcm_speed
	$(PY) -m benchmarks.memory_format
	$(PY) -m benchmarks.npu_blocks

clean-venv:
	rm -rf $(VENV)
