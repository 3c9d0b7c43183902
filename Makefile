# `make demo` and `make test` do all the set-up on a fresh machine: a .venv with the package and its test extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: demo test lint bench clean

# The venv sees system packages, so a torch that is already installed is kept; without one, torch==2.13.0
# is installed first (a CPU build here), before anything that would pull a multi-GB CUDA build of it.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO)
	$(BIN)/loramix inspect samples/random-a.kohya.safetensors samples/random-b.diffusers.safetensors --base sd15
	$(BIN)/loramix compose samples/random-a.kohya.safetensors:0.7 samples/random-b.diffusers.safetensors:0.5 \
		-o $(DEMO)/composed.safetensors
	$(BIN)/loramix compose samples/random-a.kohya.safetensors:0.7 samples/random-b.diffusers.safetensors:0.5 \
		--rank 4 --format kohya -o $(DEMO)/composed-rank4.kohya.safetensors
	$(BIN)/loramix inspect $(DEMO)/composed.safetensors
	$(BIN)/loramix generate --prompt "a face" -n 16 --seed 0 -o $(DEMO)/faces
	$(BIN)/loramix judge $(DEMO)/faces
	$(BIN)/loramix train recipes/mustache.toml --output $(DEMO)/mustache
	$(BIN)/loramix train recipes/lipstick.toml --output $(DEMO)/lipstick
	$(BIN)/loramix inspect $(DEMO)/mustache/mustache.safetensors $(DEMO)/lipstick/lipstick.safetensors
	$(BIN)/loramix compose $(DEMO)/mustache/mustache.safetensors:0.7 $(DEMO)/lipstick/lipstick.safetensors:0.7 \
		--prompt "a face with a mustache and lipstick" -n 16 --images $(DEMO)/composed-images
	$(BIN)/loramix judge $(DEMO)/composed-images

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check loramix tests bench samples

bench: $(STAMP)
	$(BIN)/python bench/bench_compose.py
	$(BIN)/python bench/bench_base.py
	$(BIN)/python bench/bench_recipes.py
	$(BIN)/python bench/bench_quantize.py
	$(BIN)/python bench/bench_compose_render.py
	$(BIN)/python bench/bench_methods.py --sets 2 --weights mustache=0.7,lipstick=0.7
	$(BIN)/python bench/bench_methods.py --sets 3 --weights mustache=0.5,lipstick=0.5,glasses=0.5
	$(BIN)/python bench/bench_generate.py

clean:
	rm -rf $(VENV) build
