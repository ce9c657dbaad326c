# The README's commands. Each bootstraps what it needs (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup test demo train-demo clean-venv

setup:
	@bash scripts/bootstrap.sh test

# Runs the whole test suite. Pytest's exit code 5 (no tests collected) is a failure.
test: setup
	@$(PY) -m pytest tests -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The main job on the embedded default: the full hierarchy on the simulated robot.
demo: setup
	@bash scripts/demo.sh $(DEMO_ARGS)

# The research loop at small size (~30 min on 2 CPU cores): collect -> train -> evaluate -> attention maps.
train-demo: setup
	@bash scripts/train_demo.sh

clean-venv:
	rm -rf $(VENV)

# The README's GIF: one simulated episode of the hierarchy (~3-4 min on 2 CPU cores); GIF_ARGS="--seed N" etc.
.PHONY: readme-gif
readme-gif: setup
	@$(PY) -m sim.make_gif --out assets/readme/episode.gif $(GIF_ARGS)
