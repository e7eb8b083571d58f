# Two commands do all the set-up: `make run DATA=<dataset root>` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= dataset/
# Extra flags per phase, e.g. make run PHASE0_ARGS="--val-ratio 0.15 --force" PHASE1_ARGS="--num-epochs 20"
PHASE0_ARGS ?=
PHASE1_ARGS ?=
PHASE2_ARGS ?=
PHASE3_ARGS ?=
# e.g. PHASE4_ARGS="--captioner openai --vlm-model qwen-vl-plus" (key in VLM_API_KEY)
PHASE4_ARGS ?=
FINAL_ARGS ?=
TRIALS ?= 50
SEEDS  ?= 42,43,44
STAMP  := $(VENV)/.installed
# make run FORCE=1 recomputes every phase; otherwise a phase whose inputs are unchanged is skipped
FORCE  ?=
F      := $(if $(FORCE),--force,)

.PHONY: setup run phase0 phase1 phase2 phase3 phase4 phase5 phase6 final ablation predict report test lint clean help

help:
	@echo "make setup              create $(VENV) and install requirements.txt + requirements-dev.txt (idempotent)"
	@echo "make run DATA=PATH      set up, then run the pipeline on the dataset root PATH (default dataset/)"
	@echo "make test [DATA=PATH]   set up, then ruff + pytest (the real-data tests use DATA when it has train.txt)"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

run: setup phase0 phase1 phase2 phase3 phase4 phase5 phase6 final predict report

phase0: setup
	$(PY) phase0/data_cleaner.py --data-root $(DATA) $(F) $(PHASE0_ARGS)
	$(PY) phase0/data_analysis.py --data-root $(DATA) $(F)

phase1: setup
	$(PY) phase1/main.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE1_ARGS)

phase2: setup
	$(PY) phase2/run_phase2.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE2_ARGS)
	$(PY) phase2/search_hyperparam.py --data-root $(DATA) --n-trials $(TRIALS) $(F)

phase3: setup
	$(PY) phase3/run_phase3.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE3_ARGS)

phase4: setup
	$(PY) phase4/run_phase4.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE4_ARGS)

phase5: setup
	$(PY) phase5/run_phase5.py --data-root $(DATA) --seeds $(SEEDS) $(F)

phase6: setup
	$(PY) phase6/run_phase6.py --data-root $(DATA) $(F)

final: setup
	$(PY) final/run_final.py --data-root $(DATA) $(F) $(FINAL_ARGS)

# the final recipe's contribution table (trains three more variants on the same folds), in final/ablation/
ablation: setup
	$(PY) final/run_final.py --data-root $(DATA) --ablation --results-dir final/ablation \
	    --figures-dir final/ablation/figures $(F) $(FINAL_ARGS)

predict: setup
	$(PY) phase4/predict_test.py --data-root $(DATA)

report: setup
	$(PY) -m msa.report

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	MSA_REAL_DATA=$(DATA) MPLBACKEND=Agg $(PY) -m pytest -q

clean:
	rm -rf .pytest_cache .ruff_cache phase*/results phase*/figures results
