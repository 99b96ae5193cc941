"""ShapeDrag's scenes, samples and ground-truth scores (no model)."""

import json
import math

import numpy as np
import pytest

from fastdrag.apps import shapes
from fastdrag.apps.dragbench import find_samples, load_sample
from fastdrag.apps.shapes import Scene, Shape, random_drag_case, render, score_edit, to_uint8


RED, BLUE, GREY = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5)


def test_a_solid_shape_centred_on_a_point_has_its_colour_centroid_there():
    for kind in shapes.SHAPE_KINDS:
        scene = Scene(background=GREY, shapes=(Shape(kind, centre=(20.0, 37.0), radius=6.5, colour=RED),))
        image = render(scene)
        pixels = shapes.key_pixels(image, RED, np.ones(image.shape[:2], bool))
        np.testing.assert_allclose(shapes.centroid(pixels), (20.0, 37.0), atol=1e-9)  # (x, y)
        assert image[37, 20].tolist() == pytest.approx(list(RED))  # (row, col)


def test_render_antialiases_edges_and_later_shapes_cover_earlier_ones():
    scene = Scene(background=GREY, shapes=(Shape("square", (32.0, 32.0), 10.0, RED), Shape("disc", (32.0, 32.0), 4.0, BLUE)))
    image = render(scene)
    assert image[32, 32].tolist() == pytest.approx(list(BLUE))
    assert image[32, 39].tolist() == pytest.approx(list(RED))
    edge = image[32, 42]  # the square's edge, x = 42 +- 0.5, covers half the pixel
    assert edge.tolist() == pytest.approx([0.75, 0.25, 0.25])


def test_stripes_move_with_their_object():
    shape = Shape("disc", (20.0, 20.0), 8.0, RED, pattern="stripes", second_colour=BLUE, period=5.0, angle=0.7)
    before = render(Scene(GREY, (shape,)))
    after = render(Scene(GREY, (shape.moved_by((5.0, -3.0)),)))
    np.testing.assert_array_equal(after[17:34, 20:37], before[20:37, 15:32])


def test_drag_cases_are_seeded_and_their_truth_moves_only_the_dragged_object():
    first = random_drag_case(np.random.default_rng(5))
    again = random_drag_case(np.random.default_rng(5))
    assert first.scene == again.scene and first.handle == again.handle and first.target == again.target
    truth = first.truth()
    assert truth.shapes[:-1] == first.scene.shapes[:-1] and truth.background == first.scene.background
    moved = truth.shapes[-1]
    assert moved.centre == first.target and first.scene.shapes[-1].centre == first.handle


@pytest.mark.parametrize("seed", range(20))
def test_drag_cases_keep_their_promises(seed):
    case = random_drag_case(np.random.default_rng(seed))
    size = shapes.IMAGE_SIZE
    obj = case.scene.shapes[-1]
    length = math.dist(case.handle, case.target)
    assert 5.5 <= length <= 12.5
    assert all(v == int(v) for v in (*case.handle, *case.target))
    for centre in (case.handle, case.target):  # the object lies inside the frame at both ends
        assert all(obj.radius <= c <= size - 1 - obj.radius for c in centre)
    # The mask holds the object at both ends.
    for scene in (case.scene, case.truth()):
        covered = shapes.disc_mask(size, scene.shapes[-1].centre, obj.radius)
        assert case.mask[covered].all()
    # No other colour comes near the key colour.
    others = [case.scene.background, obj.second_colour] + [c for s in case.scene.shapes[:-1] for c in (s.colour, s.second_colour)]
    assert min(np.linalg.norm(np.subtract(case.key_colour, c)) for c in others) >= shapes.KEY_SEPARATION


def perfect_and_unedited(seed: int = 3):
    case = random_drag_case(np.random.default_rng(seed))
    original = to_uint8(render(case.scene)) / 255.0
    truth = to_uint8(render(case.truth())) / 255.0
    return case, original, truth


def test_the_truth_scores_perfectly_and_the_unedited_image_scores_no_move():
    case, original, truth = perfect_and_unedited()
    args = (case.key_colour, case.mask, case.handle, case.target)
    perfect = score_edit(truth, original, truth, *args)
    assert perfect["distance"] == 0 and perfect["share"] == pytest.approx(1) and perfect["iou"] == 1
    assert perfect["psnr_truth"] == math.inf
    unedited = score_edit(original, original, truth, *args)
    assert unedited["share"] == 0 and unedited["psnr_outside"] == math.inf
    assert unedited["distance"] == pytest.approx(math.dist(case.handle, case.target), abs=0.5)


def test_an_object_that_vanished_scores_as_not_moved():
    case, original, truth = perfect_and_unedited()
    blank = np.full_like(original, 0.0)
    blank[...] = case.scene.background
    score = score_edit(blank, original, truth, case.key_colour, case.mask, case.handle, case.target)
    assert score["share"] == 0 and score["iou"] == 0


def test_write_shapedrag_is_dragbench_data_with_its_ground_truth(tmp_path):
    keys = shapes.write_shapedrag(tmp_path, count=3, seed=7)
    assert [sample.key for sample in find_samples(tmp_path)] == keys == ["shapes/0000", "shapes/0001", "shapes/0002"]
    rng = np.random.default_rng(7)
    for sample in find_samples(tmp_path):
        case = random_drag_case(rng)
        data = load_sample(sample)
        truth = json.loads((sample.folder / shapes.GROUND_TRUTH_FILE).read_text())
        assert data.handles == [case.handle] and data.targets == [case.target]
        assert tuple(truth["handle"]) == case.handle and tuple(truth["key_colour"]) == case.key_colour
        np.testing.assert_array_equal(data.mask, case.mask)
        np.testing.assert_array_equal(np.asarray(data.image), to_uint8(render(case.scene)))
    # Scoring a folder of perfect edits: every sample at its truth.
    for key in keys:
        (tmp_path / "results" / key).mkdir(parents=True)
        (tmp_path / "results" / key / shapes.EDITED_FILE).write_bytes((tmp_path / key / shapes.TARGET_FILE).read_bytes())
    scores = shapes.score_folder(tmp_path, tmp_path / "results")
    assert sorted(scores) == keys and all(s["distance"] == 0 and s["iou"] == 1 for s in scores.values())


def test_shapedrag_make_refuses_a_folder_with_files_and_eval_refuses_an_empty_run(tmp_path, capsys):
    from fastdrag.apps.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert main(["shapedrag", "make", "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["shapedrag", "make", "--out", str(tmp_path / "data"), "--count", "1"]) == 0
    (tmp_path / "run").mkdir()
    assert main(["shapedrag", "eval", "--data", str(tmp_path / "data"), "--results", str(tmp_path / "run")]) == 2
    assert "no edited ShapeDrag samples" in capsys.readouterr().err
