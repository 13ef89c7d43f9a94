# posenet_ros: the two commands users run are `make demo` and `make test`; both set up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test lint pytest colcon-check demo demo-model bench uncertainty-experiment clean

setup: $(STAMP)

# Idempotent: rebuilt only when the package metadata changes. torch is pinned first so the local
# CPU wheel is used; an unpinned torch would pull the CUDA build.
$(STAMP): setup.py setup.cfg package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# rclpy's Python source for the fake-ROS conformance test: downloaded, read as a zip, never installed.
	$(PY) -m pip download -q --disable-pip-version-check --no-deps -d $(VENV)/wheels rclpy-intellisense==1.2.0
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: setup
	$(VENV)/bin/pytest -q

# Real colcon build into a temporary workspace plus install-layout check (also part of pytest).
colcon-check: setup
	$(VENV)/bin/pytest -q test/test_colcon_build.py

test: lint pytest

bench: setup
	$(VENV)/bin/posenet-ros bench --json out/bench.json

# The main job on the bundled demo model: record its scene's test trajectory as a rosbag2 (images
# plus ground-truth TF, rendered here with the training run's seeds), replay it through the model as
# the node would, and print accuracy and latency with the report's path.
DEMO_OUT := out/demo_run
demo: setup
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/posenet-train synth --out $(DEMO_OUT)/scene --train-sequences 0 --test-sequences 2 --frames 200 \
	    --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train to-bag $(DEMO_OUT)/scene --out $(DEMO_OUT)/camera_bag --storage mcap --rate 10
	$(VENV)/bin/posenet-ros replay $(DEMO_OUT)/camera_bag --model models/posenet_demo.pt --device cpu \
	    --gt-frames map camera_optical --out $(DEMO_OUT)/poses_bag --report $(DEMO_OUT)/report

# Rebuild the bundled demo model from nothing: render the synthetic room, train, export, evaluate.
# CPU configuration (input 112, 2200 steps); see models/README.md for its measured accuracy and time.
DEMO := out/demo
demo-model: setup
	$(VENV)/bin/posenet-train synth --out $(DEMO)/room --train-sequences 16 --test-sequences 2 --frames 200 \
	    --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train fit $(DEMO)/room --out $(DEMO)/run --input-size 112 --resize-shortest-side 128 \
	    --final-fc-dim 1024 --steps 2200 --batch-size 32 --lr 1e-3 --learn-weighting --eval-every 250 \
	    --eval-images 96 --checkpoint-every 250 --scene-name synthetic_room --export models/posenet_demo.pt
	$(VENV)/bin/posenet-train eval models/posenet_demo.pt $(DEMO)/room --out $(DEMO)/eval

clean:
	rm -rf $(VENV) build install log out *.egg-info

# The calibrated-uncertainty experiment (README "Uncertainty"): train on one trajectory, calibrate on
# a second, test on a third, compare with a held-out region (headings never seen in training).
# About 35 min on 2 CPU cores.
UNC := out/uncertainty
uncertainty-experiment: setup
	$(VENV)/bin/posenet-train synth --out $(UNC)/room --seed 7 --train-sequences 1 --test-sequences 1 --frames 800 \
	    --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train synth --out $(UNC)/test --seed 8 --train-sequences 0 --test-sequences 1 --frames 400 \
	    --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train synth --out $(UNC)/ood --seed 9 --train-sequences 0 --test-sequences 1 --frames 400 \
	    --width 256 --height 192 --heading-spread 0
	$(VENV)/bin/posenet-train fit $(UNC)/room --out $(UNC)/run --input-size 112 --resize-shortest-side 128 \
	    --final-fc-dim 1024 --steps 1400 --batch-size 32 --lr 1e-3 --learn-weighting --eval-every 200 \
	    --eval-images 96 --checkpoint-every 200 --scene-name synthetic_room --no-progress \
	    --export $(UNC)/model.pt --mc-dropout
	$(VENV)/bin/posenet-train calibrate $(UNC)/model.pt $(UNC)/room --split test --out $(UNC)/model_calibrated.pt
	$(VENV)/bin/posenet-train eval $(UNC)/model_calibrated.pt $(UNC)/test --no-baseline --uncertainty \
	    --ood $(UNC)/ood --out $(UNC)/eval
