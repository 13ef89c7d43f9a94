"""The synthetic benchmark (``synth --preset room-benchmark``): each perturbation does what it says,
renders are reproducible, label noise and the unseen region are where they belong, the layout is
one the other commands read, and the plain ``synth`` output is what it was before the benchmark."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_synth import DOT, dot_scene

from posenet_ros.geometry import Pose, matrix_to_quat, quat_to_matrix, rotation_error_deg
from posenet_train import perturb
from posenet_train.datasets import read_cameras_json, read_poses_csv
from posenet_train.perturb import Nuisance, PerturbedRenderer
from posenet_train.synth import (
    PRESETS,
    BenchmarkConfig,
    Camera,
    Face,
    Scene,
    SynthConfig,
    benchmark_jobs,
    body_rotation,
    render_benchmark,
    render_dataset,
    render_sequence,
    room_scene,
    smooth_trajectory,
    trajectory_curve,
)

TINY = BenchmarkConfig(train_sequences=2, val_sequences=1, test_sequences=1, frames_per_sequence=6, width=48, height=36)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    render_benchmark(TINY, out, jobs=1, progress=False)
    return out


def grey(value: float = 100.0, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.full((*shape, 3), value, np.float32)


def textured(seed: int = 0, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(30, 220, (*shape, 3)).astype(np.float32)


def high_frequency_energy(image: np.ndarray) -> float:
    g = image.astype(np.float64).mean(axis=2)
    return float((cv2.Laplacian(g, cv2.CV_64F) ** 2).mean())


# -- the perturbations, one by one ---------------------------------------------------------------


def test_gain_scales_mean_brightness() -> None:
    img = grey(100.0)
    assert perturb.expose(img, 1.4).mean() == pytest.approx(140.0)
    plain = perturb.sensor(textured(), Nuisance(), np.random.default_rng(0)).astype(float)
    bright = perturb.sensor(textured() * 0.5, Nuisance(gain=1.5), np.random.default_rng(0)).astype(float)
    assert bright.mean() == pytest.approx(0.75 * plain.mean(), rel=0.01)


def test_gamma_and_white_balance() -> None:
    img = grey(64.0)
    assert perturb.apply_gamma(img, 2.0).mean() == pytest.approx(255 * (64 / 255) ** 0.5, rel=1e-5)
    assert perturb.apply_gamma(img, 1.0).mean() == pytest.approx(64.0)
    wb = perturb.white_balance(img, (1.2, 1.0, 0.8))
    np.testing.assert_allclose(wb[5, 7], [76.8, 64.0, 51.2], rtol=1e-6)


def test_poisson_gaussian_noise_raises_variance_on_a_flat_region_by_the_model() -> None:
    img = grey(100.0, (200, 200))
    assert perturb.sensor_noise(img, 0.0, 0.0, np.random.default_rng(0)).std() == 0.0
    shot = perturb.sensor_noise(img, 500.0, 0.0, np.random.default_rng(0))
    # Poisson: variance of the electrons = their mean; in grey levels, var = I * 255 / full_well.
    assert shot.var() == pytest.approx(100.0 * 255 / 500, rel=0.05)
    assert shot.mean() == pytest.approx(100.0, abs=0.2)
    both = perturb.sensor_noise(img, 500.0, 3.0, np.random.default_rng(0))
    assert both.var() == pytest.approx(100.0 * 255 / 500 + 9.0, rel=0.05)


def test_defocus_lowers_high_frequency_energy() -> None:
    img = textured()
    assert perturb.defocus(img, 0.0) is img
    e0, e1, e2 = (high_frequency_energy(perturb.defocus(img, s)) for s in (0.0, 0.7, 1.5))
    assert e2 < e1 < 0.5 * e0


def test_jpeg_quality_loses_more_at_60_than_at_90() -> None:
    img = np.clip(np.rint(cv2.GaussianBlur(textured(1, (96, 96)), (0, 0), 1.0)), 0, 255).astype(np.uint8)
    assert perturb.jpeg(img, 0) is img
    err = {q: np.abs(perturb.jpeg(img, q).astype(float) - img).mean() for q in (60, 90)}
    assert 0 < err[90] < err[60]
    # It is a real JPEG round trip: OpenCV's encoder at that quality.
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok and np.array_equal(perturb.jpeg(img, 60), cv2.cvtColor(cv2.imdecode(buf, 1), cv2.COLOR_BGR2RGB))


def test_vignetting_darkens_the_corners_by_its_share() -> None:
    out = perturb.vignette(grey(100.0, (49, 65)), 0.4)
    assert out[24, 32].mean() == pytest.approx(100.0)
    assert out[0, 0].mean() == pytest.approx(60.0, rel=1e-5) and out[-1, -1].mean() == pytest.approx(60.0, rel=1e-5)


def render_still(scene: Scene, camera: Camera, nuisance: Nuisance, pose: Pose) -> np.ndarray:
    r = PerturbedRenderer(scene, camera, nuisance, 0, lambda t: [pose] * len(np.atleast_1d(t)), 2)
    return r.render(pose, 0)


def dot_centroid(image: np.ndarray) -> np.ndarray:
    dark = 255.0 - image[..., 0].astype(float)
    dark[dark < 60] = 0
    vs, us = np.nonzero(dark)
    assert len(vs) > 0, "the dot is not in the image"
    return np.array([np.average(us, weights=dark[vs, us]), np.average(vs, weights=dark[vs, us])])


def test_radial_distortion_moves_a_point_where_opencv_model_says() -> None:
    camera = Camera(160, 120, 70.0)
    pose = Pose(np.zeros(3), matrix_to_quat(body_rotation(-0.25, -0.15, 0.0)))  # the dot off-centre
    lens = Nuisance(k1=-0.2, k2=0.03)
    k, dist = camera.intrinsics(), np.array([lens.k1, lens.k2, 0.0, 0.0])
    rot = quat_to_matrix(pose.quaternion)
    rvec, _ = cv2.Rodrigues(rot.T)
    tvec = -rot.T @ pose.position
    expected = cv2.projectPoints(DOT[None], rvec, tvec, k, dist)[0].reshape(2)
    pinhole = cv2.projectPoints(DOT[None], rvec, tvec, k, np.zeros(4))[0].reshape(2)
    assert np.linalg.norm(expected - pinhole) > 3.0, "the test needs a point the lens visibly moves"
    np.testing.assert_allclose(dot_centroid(render_still(dot_scene(), camera, lens, pose)), expected, atol=0.35)
    np.testing.assert_allclose(dot_centroid(render_still(dot_scene(), camera, Nuisance(), pose)), pinhole, atol=0.35)
    # And cameras.json says so.
    recorded = lens.lens(camera)
    assert recorded.distortion == (-0.2, 0.03, 0.0, 0.0) and recorded.fx == pytest.approx(k[0, 0])


def test_supersampling_averages_the_sub_pixel_samples() -> None:
    scene, camera = room_scene(0), Camera(32, 24)
    pose = smooth_trajectory(scene, 3, seed=1)[1]
    one = render_still(scene, camera, Nuisance(), pose).astype(float)
    big = render_still(scene, Camera(64, 48), Nuisance(), pose).astype(float)
    four = render_still(scene, camera, Nuisance(supersample=2), pose).astype(float)
    # Supersample 2 is the 2x render area-averaged (up to the 8-bit rounding of each).
    area = big.reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(four - area).max() <= 1.0 and np.abs(one - area).mean() > 2 * np.abs(four - area).mean()


def test_motion_blur_follows_the_trajectory_and_lowers_high_frequency_energy() -> None:
    scene, camera = room_scene(0), Camera(64, 48)
    curve = trajectory_curve(scene, 3, 50.0)
    poses = smooth_trajectory(scene, 20, 3, 50.0)
    still = PerturbedRenderer(scene, camera, Nuisance(supersample=2), 0, curve, 20)
    moving = PerturbedRenderer(scene, camera, Nuisance(supersample=2, shutter=1.0), 0, curve, 20)
    sharp = [high_frequency_energy(still.render(poses[j], j)) for j in (5, 10, 15)]
    blurred = [high_frequency_energy(moving.render(poses[j], j)) for j in (5, 10, 15)]
    # Four samples per pixel spread over the exposure: softer on the whole, though each sample's
    # copy of an edge is itself sharp (a few samples, as the issue asks, not a continuous blur).
    assert np.mean(blurred) < 0.85 * np.mean(sharp)
    diff = np.abs(still.radiance(poses[5], 5) - moving.radiance(poses[5], 5)).mean()
    assert diff > 5.0
    # The curve is the trajectory: its poses at the frames' times are the labels.
    again = curve(np.linspace(0, 1, 20))
    assert all(np.allclose(a.position, b.position) for a, b in zip(again, poses, strict=True))


def test_occluders_cover_pixels_and_move_smoothly() -> None:
    scene, camera = room_scene(0), Camera(64, 48)
    poses = smooth_trajectory(scene, 40, 2, 50.0)
    curve = trajectory_curve(scene, 2, 50.0)
    plain = PerturbedRenderer(scene, camera, Nuisance(), 5, curve, 40)
    crowded = PerturbedRenderer(scene, camera, Nuisance(occluders=2), 5, curve, 40)
    covered = []
    for j in range(0, 40, 4):
        a, b = plain.render(poses[j], j), crowded.render(poses[j], j)
        covered.append(float((np.abs(a.astype(int) - b).sum(axis=2) > 0).mean()))
    assert max(covered) > 0.05 and np.mean(covered) > 0.02
    # Boxes on the floor, 1.5-3.5 m ahead; from one frame to the next (of 200) they move a little.
    walk = smooth_trajectory(scene, 200, 2, 50.0)
    boxes = [perturb.occluder_boxes(walk[j], j / 199, 2, 5, 100) for j in (100, 101)]
    forward = quat_to_matrix(walk[100].quaternion)[:2, 2]
    for f in (f for f in boxes[0] if f.axis == 2):
        centre = (np.array(f.lo) + np.array(f.hi)) / 2
        ahead = (centre - walk[100].position[:2]) @ forward / np.linalg.norm(forward)
        assert 1.4 < ahead < 3.6 and f.coord <= 1.9
    shift = [np.abs(np.array(a.lo) - np.array(b.lo)).max() for a, b in zip(boxes[0], boxes[1], strict=True)]
    assert 0 < max(shift) < 0.3


def test_swapped_posters_change_a_wall_panel_texture() -> None:
    scene, camera = room_scene(0), Camera(64, 48)
    swapped = perturb.swap_posters(scene.faces, ((2, 0), (5, 3)), 100)
    assert swapped[2].texture == 100 and swapped[5].texture == 103
    assert [f.texture for i, f in enumerate(swapped) if i not in (2, 5)] == [
        f.texture for i, f in enumerate(scene.faces) if i not in (2, 5)
    ]
    # Face 2 is the x = 0 wall's first panel (y in 0..4): look at it.
    pose = Pose(np.array([3.0, 2.0, 1.5]), matrix_to_quat(body_rotation(np.pi, 0.0, 0.0)))
    before = render_still(scene, camera, Nuisance(), pose).astype(int)
    after = render_still(scene, camera, Nuisance(posters=((2, 0),)), pose).astype(int)
    assert (np.abs(before - after).sum(axis=2) > 30).mean() > 0.3


def test_the_light_shades_faces_by_their_normals() -> None:
    scene, camera = room_scene(0), Camera(64, 48)
    pose = smooth_trajectory(scene, 3, seed=1)[1]
    plain = render_still(scene, camera, Nuisance(), pose).astype(float)
    lights = [
        render_still(scene, camera, Nuisance(light=light, light_share=0.6), pose).astype(float)
        for light in ((1.0, 1.0, 2.7), (9.0, 7.0, 2.7))
    ]
    assert np.abs(lights[0] - lights[1]).mean() > 5 and np.abs(lights[0] - plain).mean() > 5
    # Lambert: a floor point right under the light gets cos = 1; one on the far side of a wall none.
    from posenet_train.synth import FaceArrays

    faces = FaceArrays.of([Face(2, 0.0, (0, 0), (10, 8), 0), Face(0, 0.0, (0, 0), (8, 3), 0)])
    points = np.array([[5.0, 4.0, 0.0], [0.0, 4.0, 1.0]])
    dirs = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # a ray down onto the floor; one hitting the wall's back
    shade = perturb.lambert((5.0, 4.0, 3.0), 0.5, faces, np.array([0, 1]), points, dirs)
    assert shade[0] == pytest.approx(0.5 + 0.5 * 2.5 * 9 / 18) and shade[1] == pytest.approx(0.5)


# -- seeds ----------------------------------------------------------------------------------------


def test_same_seed_same_images_and_other_sequences_other_perturbations(tmp_path: Path) -> None:
    scene = room_scene(0)
    jobs = benchmark_jobs(TINY, scene)
    job = next(j for j in jobs if j.ranges == "perturbed")
    a, _ = render_sequence(TINY, job, tmp_path / "a")
    render_sequence(TINY, job, tmp_path / "b")
    for r in a:
        assert (tmp_path / "a" / job.folder / r.image).read_bytes() == (
            tmp_path / "b" / job.folder / r.image
        ).read_bytes()
    draws = [perturb.draw_nuisance(perturb.TRAINING, j.nuisance_seed, scene) for j in jobs if j.ranges == "training"]
    assert len({(d.gain, d.light, d.white_balance) for d in draws}) == len(draws)
    assert perturb.draw_nuisance(perturb.PERTURBED, 7, scene) == perturb.draw_nuisance(perturb.PERTURBED, 7, scene)


def test_drawn_perturbations_stay_in_their_ranges() -> None:
    scene = room_scene(0)
    draws = [perturb.draw_nuisance(perturb.PERTURBED, s, scene) for s in range(200)]
    assert all(0.5 <= d.gain <= 1.5 and 60 <= d.jpeg_quality <= 90 for d in draws)
    assert all(len(d.posters) == 2 and 1 <= d.occluders <= 2 and d.k1 < 0 for d in draws)
    assert min(d.gain for d in draws) < 0.6 and max(d.gain for d in draws) > 1.4
    clean = perturb.draw_nuisance(perturb.CLEAN, 3, scene)
    assert replace(clean, supersample=1) == Nuisance(light=None, light_share=0.0)


# -- labels and regions ---------------------------------------------------------------------------


def test_label_noise_has_the_requested_size() -> None:
    rng = np.random.default_rng(0)
    pose = Pose(np.array([4.0, 3.0, 1.5]), matrix_to_quat(body_rotation(0.3, 0.1, 0.0)))
    noisy = [perturb.noisy_label(pose, 0.015, 0.5, rng) for _ in range(3000)]
    dp = np.array([np.linalg.norm(n.position - pose.position) for n in noisy])
    dr = rotation_error_deg(np.array([n.quaternion for n in noisy]), np.tile(pose.quaternion, (3000, 1)))
    assert np.sqrt((dp**2).mean()) == pytest.approx(0.015, rel=0.05)
    assert np.sqrt((dr**2).mean()) == pytest.approx(0.5, rel=0.05)


def true_poses(cfg: BenchmarkConfig, folder: str) -> dict[str, Pose]:
    """Every frame's true pose, from the trajectories' seeds, by image name."""
    out = {}
    for job in benchmark_jobs(cfg, room_scene(cfg.scene_seed)):
        if job.folder == folder:
            scene = replace(room_scene(cfg.scene_seed), walk_lo=job.walk[0], walk_hi=job.walk[1])
            poses = smooth_trajectory(scene, cfg.frames_per_sequence, job.trajectory_seed, cfg.heading_spread_deg)
            out |= {f"seq-{job.index:02d}/frame-{j:06d}.color.png": p for j, p in enumerate(poses)}
    return out


def test_label_noise_only_on_the_train_labels(bench: Path) -> None:
    truth = true_poses(TINY, "train")
    records = read_poses_csv(bench / "train")
    assert {r.split for r in records} == {"train", "val"}
    for r in records:
        err = np.linalg.norm(r.position - truth[r.image].position)
        if r.split == "train":
            assert 0 < err < 0.1
        else:
            assert err < 1e-9
    for folder in ("test-clean", "test-perturbed", "test-unseen"):
        truth = true_poses(TINY, folder)
        assert all(np.linalg.norm(r.position - truth[r.image].position) < 1e-9 for r in read_poses_csv(bench / folder))


def test_the_unseen_region_is_never_entered_by_training(bench: Path) -> None:
    unseen = read_poses_csv(bench / "test-unseen")
    assert all(r.position[1] >= TINY.unseen_from_y - 1e-9 for r in unseen)
    for folder in ("train", "test-clean", "test-perturbed"):
        # Labels (train ones with their noise) and the trajectories between the frames.
        assert all(r.position[1] <= TINY.seen_to_y + 0.1 for r in read_poses_csv(bench / folder))
    for job in benchmark_jobs(TINY, room_scene(0)):
        scene = replace(room_scene(0), walk_lo=job.walk[0], walk_hi=job.walk[1])
        ys = [p.position[1] for p in trajectory_curve(scene, job.trajectory_seed, 50.0)(np.linspace(0, 1, 2000))]
        if job.folder == "test-unseen":
            assert min(ys) >= TINY.unseen_from_y - 1e-9
        else:
            assert max(ys) <= TINY.seen_to_y + 1e-9


def test_the_demo_preset_withholds_nothing_and_trains_on_plain_synths_trajectories() -> None:
    demo = replace(PRESETS["room-demo"], train_sequences=2, val_sequences=1, test_sequences=1)
    demo.validate()
    assert demo.folders == ("train", "test-clean", "test-perturbed")
    scene = room_scene(0)
    jobs = benchmark_jobs(demo, scene)
    assert {j.folder for j in jobs} == {"train", "test-clean", "test-perturbed"}
    assert all(j.walk == (scene.walk_lo, scene.walk_hi) for j in jobs)
    # Plain synth's seeds: train i, val 250 + i, test 500 + i (make demo's test trajectories).
    assert [j.trajectory_seed for j in jobs if j.split != "test"] == [0, 1, 250]
    assert {j.trajectory_seed for j in jobs if j.split == "test"} == {500}
    assert any(j.label_noise and j.ranges == "training" for j in jobs)
    with pytest.raises(ValueError, match="has no folder test-unseen"):
        render_benchmark(demo, Path("/nonexistent"), folders=["test-unseen"])
    with pytest.raises(ValueError, match="both or neither"):
        replace(demo, seen_to_y=4.8).validate()


# -- the layout ------------------------------------------------------------------------------------


def test_the_preset_writes_data_sets_the_other_commands_read(bench: Path) -> None:
    counts = {f: len(read_poses_csv(bench / f)) for f in ("train", "test-clean", "test-perturbed", "test-unseen")}
    assert counts == {"train": 18, "test-clean": 6, "test-perturbed": 6, "test-unseen": 6}
    for folder in ("test-clean", "test-perturbed", "test-unseen"):
        assert {r.split for r in read_poses_csv(bench / folder)} == {"test"}
    cams = read_cameras_json(bench / "test-perturbed").single()
    assert cams is not None and cams.distortion and cams.width == TINY.width
    assert read_cameras_json(bench / "train").single().distortion == ()
    info = json.loads((bench / "benchmark.json").read_text())
    assert info["preset"] == "room-benchmark" and info["folders"]["train"]["splits"] == ["train", "val"]
    # The perturbed sequences' swapped posters are on panels they have in view.
    for seq in json.loads((bench / "test-perturbed" / "scene.json").read_text())["sequences"]:
        scene = replace(room_scene(0), walk_lo=tuple(seq["walk"][0]), walk_hi=tuple(seq["walk"][1]))
        poses = smooth_trajectory(scene, TINY.frames_per_sequence, seq["trajectory_seed"], TINY.heading_spread_deg)
        seen = perturb.most_seen_panels(scene, poses, TINY.hfov_deg)
        assert seq["posters"] and all(face in seen for face, _ in seq["posters"])
    # Clean and perturbed share their trajectories (paired frames), not their pixels.
    clean, pert = read_poses_csv(bench / "test-clean"), read_poses_csv(bench / "test-perturbed")
    assert all(np.array_equal(a.position, b.position) for a, b in zip(clean, pert, strict=True))
    assert (bench / "test-clean" / clean[2].image).read_bytes() != (
        bench / "test-perturbed" / pert[2].image
    ).read_bytes()


def test_eval_on_a_test_set_with_the_training_set_as_baseline(
    bench: Path, posenet_file, tmp_path: Path, capsys
) -> None:
    """``eval MODEL OUT/test-perturbed --baseline-data OUT/train`` prints PoseNet's and the
    nearest-neighbour baseline's figures; the baseline's answers are training labels."""
    from posenet_train.cli import main as train_main
    from posenet_train.evaluate import evaluate

    model, _ = posenet_file
    summary, arrays = evaluate(model, bench / "test-perturbed", baseline_data=bench / "train")
    train = np.array([r.position for r in read_poses_csv(bench / "train") if r.split == "train"])
    assert summary["nearest_neighbour"]["frames"] == 6 and summary["baseline_data"] == str(bench / "train")
    assert all(np.min(np.linalg.norm(train - p, axis=1)) == 0 for p in arrays["nearest_neighbour"])
    # Without it, a test-only set has nothing to search, and says so.
    alone, _ = evaluate(model, bench / "test-perturbed")
    assert "nearest_neighbour" not in alone and "--baseline-data" in alone["notes"][0]
    cmd = ["eval", str(model), str(bench / "test-perturbed"), "--baseline-data", str(bench / "train")]
    assert train_main([*cmd, "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "PoseNet" in printed and "nearest neighbour" in printed


def test_cli_preset_overrides_and_refusals(tmp_path: Path, capsys) -> None:
    from posenet_train.cli import main as train_main

    args = ["synth", "--out", str(tmp_path / "b"), "--preset", "room-benchmark", "--train-sequences", "1"]
    args += ["--val-sequences", "0", "--test-sequences", "1", "--frames", "2", "--width", "32", "--height", "24"]
    assert train_main([*args, "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 frames (2 train)" in out and "test-unseen" in out
    assert cv2.imread(str(tmp_path / "b" / "test-unseen" / "seq-01" / "frame-000001.color.png")).shape == (24, 32, 3)
    assert train_main([*args, "--seven-scenes"]) == 2
    assert "--preset writes png" in capsys.readouterr().err


def test_plain_synth_output_is_unchanged(tmp_path: Path) -> None:
    """The names, splits and poses of a plain render (hashed at 6 decimals) and each frame's mean grey
    level, as the renderer gave them before the benchmark existed (the demo model was trained on
    that output; the pixels were byte-identical then). Means, not a hash of the pixels: a pixel can
    round the other way where another CPU's NumPy evaluates sin/cos a ulp apart (issue 15); a change
    to the rendering moves a mean by far more than 0.01."""
    cfg = SynthConfig(
        train_sequences=1, test_sequences=1, val_sequences=1, frames_per_sequence=3, width=64, height=48,
        heading_spread_deg=50.0,
    )  # fmt: skip
    render_dataset(cfg, tmp_path, progress=False)
    h = hashlib.sha256()
    means = []
    for r in read_poses_csv(tmp_path):
        h.update(r.image.encode() + r.split.encode())
        h.update(" ".join(f"{v:.6f}" for v in (*r.position, *r.quaternion)).encode())
        means.append(float(cv2.imread(str(tmp_path / r.image), cv2.IMREAD_COLOR).mean()))
    assert h.hexdigest() == "22aeb4ad2628abae63beeb2e213e58de647157ffa31ee32f6f3055ba438145c1"
    expected = [112.4625, 94.1922, 105.8236, 110.861, 123.3124, 142.5866, 137.8865, 102.9178, 111.0189]
    assert means == pytest.approx(expected, abs=0.01)


def test_only_renders_the_named_folders_exactly_as_the_whole_preset_does(bench: Path, tmp_path: Path) -> None:
    """--only test-clean (what make demo renders): the same images and poses as in the whole
    benchmark, and no other folder; an unknown folder is one line."""
    render_benchmark(TINY, tmp_path, jobs=1, progress=False, folders=["test-clean"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["test-clean"]
    assert (tmp_path / "test-clean" / "poses.csv").read_bytes() == (bench / "test-clean" / "poses.csv").read_bytes()
    for image in sorted((bench / "test-clean").rglob("*.png")):
        rel = image.relative_to(bench)
        assert hashlib.sha256((tmp_path / rel).read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    with pytest.raises(ValueError, match="has no folder test-dirty"):
        render_benchmark(TINY, tmp_path, jobs=1, progress=False, folders=["test-dirty"])
