# `make demo` and `make test` do all the set-up on a fresh machine: an isolated .venv with the package and its
# test extras, every version from requirements/lock.txt (the versions the test suite passed with).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
DEMO := build/demo
LATEST := build/latest
# TORCH=lock (default): torch from the lock, inside an isolated venv (here a CPU build from the local disk).
# TORCH=system: the venv also sees this Python's packages and keeps the torch installed there (say, your own
# CUDA build); everything else still comes from the lock.
TORCH ?= lock
# The torch release `make lock` pins; the rest of the lock is the newest that pyproject.toml allows, but for
# LOCK_HOLDS: selenium 4.52 (test extra) needs a certifi>=2026.10.23 that is not published (2026-12-07): the lock
# keeps 4.51.
TORCH_VERSION ?= 2.13.0
LOCK_HOLDS ?= selenium<4.52

.PHONY: demo test test-fast lint bench clean lock check-latest venv

venv: $(STAMP)

# torch goes in first, alone and pinned, so that nothing which depends on it pulls another build. pip compiles
# every file it installs one after another; compileall then does it on every core (2 cores: 29 s of installing and
# 19 s of compiling, against 61 s with pip compiling). Like pip it passes over files this Python cannot compile
# (torch ships one written for 3.12), so its status is not the venv's.
$(STAMP): pyproject.toml $(LOCK)
ifeq ($(TORCH),system)
	test -d $(VENV) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(BIN)/python -c "import torch" || { echo "Error: TORCH=system, but $(PYTHON) has no torch" >&2; exit 1; }
	grep -v '^torch==' $(LOCK) > $(VENV)/lock-without-torch.txt
	$(BIN)/python -m pip install -q --no-compile -c $(VENV)/lock-without-torch.txt -e '.[test]'
else
	@if grep -qs 'include-system-site-packages = true' $(VENV)/pyvenv.cfg; then \
		echo "$(VENV) sees the system's packages: rebuilding it isolated"; rm -rf $(VENV); fi
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -c $(LOCK) torch
	$(BIN)/python -m pip install -q --no-compile -c $(LOCK) -e '.[test]'
endif
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
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
	@# The two LoRAs train side by side, a thread each (a toy step on one thread is 0.18 s against 0.15 s on two):
	@# the lipstick's log goes to a file, the mustache shows its progress here.
	OMP_NUM_THREADS=1 $(BIN)/loramix train recipes/lipstick.toml --output $(DEMO)/lipstick > $(DEMO)/lipstick.log 2>&1 & \
	lipstick=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/loramix train recipes/mustache.toml --output $(DEMO)/mustache || { kill $$lipstick; exit 1; }; \
	wait $$lipstick || { cat $(DEMO)/lipstick.log >&2; exit 1; }; \
	tail -n 1 $(DEMO)/lipstick.log
	$(BIN)/loramix inspect $(DEMO)/mustache/mustache.safetensors $(DEMO)/lipstick/lipstick.safetensors
	@# Composed the way the README recommends: regionally, each LoRA at 1 inside its attribute's region once the
	@# base has laid out the face (the lipstick from 40% of the steps, the mustache, which covers lips begun
	@# before it, from 60%), each on a prompt naming its own attribute.
	$(BIN)/loramix compose $(DEMO)/mustache/mustache.safetensors:1@0.6-1#samples/regions/mustache.png \
		$(DEMO)/lipstick/lipstick.safetensors:1@0.4-1#samples/regions/lipstick.png --method regional \
		--prompt "a face with a mustache and lipstick" --lora-prompt "mustache=a face with a mustache" \
		--lora-prompt "lipstick=a face with lipstick" -n 16 --images $(DEMO)/composed-images
	$(BIN)/loramix judge $(DEMO)/composed-images
	mkdir -p $(DEMO)/loras
	cp $(DEMO)/mustache/mustache.safetensors $(DEMO)/lipstick/lipstick.safetensors $(DEMO)/loras/
	$(BIN)/python scripts/serve_demo.py $(DEMO)/loras

# Two workers, one a core: the tests run torch on one thread each (tests/conftest.py), so a second worker uses
# the second core rather than fighting the first for it.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15

# The quick loop while editing: everything but the tests marked slow (subprocesses, kills, the toy-base build,
# end-to-end training and the many-image judge checks), about a minute on 2 cores. `make test` runs all.
# --dist loadfile keeps a file's tests on one worker, so its module fixtures (a trained run, a loaded base)
# are built once rather than once on each worker.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check loramix tests bench samples scripts

bench: $(STAMP)
	$(BIN)/python bench/bench_compose.py
	$(BIN)/python bench/bench_base.py
	$(BIN)/python bench/bench_recipes.py
	$(BIN)/python bench/bench_quantize.py
	$(BIN)/python bench/bench_compose_render.py
	$(BIN)/python bench/bench_methods.py --sets 2 --weights mustache=0.7,lipstick=0.7
	$(BIN)/python bench/bench_methods.py --sets 3 --weights mustache=0.5,lipstick=0.5,glasses=0.5
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_serve.py
	$(BIN)/python bench/bench_real_bases.py

# The lock: a throw-away venv resolves the newest releases pyproject.toml allows (torch pinned), and pip freeze
# records them. Run the suite on the new lock before committing it.
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q torch==$(TORCH_VERSION)
	echo '$(LOCK_HOLDS)' | tr ' ' '\n' > build/lock-holds.txt
	build/lock-venv/bin/python -m pip install -q -c build/lock-holds.txt -e '.[test]'
	mkdir -p requirements
	{ echo "# Generated by \`make lock\`: every package the test suite passed with, as pip constraints."; \
	  echo "# Used as: pip install -c requirements/lock.txt -e '.[test]'"; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^#' | sed 's/+[a-z0-9.]*$$//'; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf build/lock-venv
	cat $(LOCK)

# The newest releases pyproject.toml allows, in a throw-away venv, and a smoke run of the main jobs on them.
check-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)/venv
	$(LATEST)/venv/bin/python -m pip install -q torch==$(TORCH_VERSION)
	$(LATEST)/venv/bin/python -m pip install -q -e '.[test]'
	$(LATEST)/venv/bin/loramix env
	bash scripts/smoke.sh $(LATEST)/venv/bin $(LATEST)/smoke

clean:
	rm -rf $(VENV) build
