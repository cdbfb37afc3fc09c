import numpy as np
import pytest

from research.protocol import (Step, Task, eval_label_map, label_map, parse_task, present_classes,
                               select_images, tags_from_mask)


def test_parse_task_voc_specs():
    t = parse_task("15-5", 21)
    assert t.steps == (tuple(range(1, 16)), tuple(range(16, 21)))
    t = parse_task("15-1", 21)
    assert t.num_steps == 6 and t.steps[1:] == ((16,), (17,), (18,), (19,), (20,))
    assert parse_task("10-10", 21).steps[1] == tuple(range(11, 21))
    assert parse_task("19-1", 21).steps == (tuple(range(1, 20)), (20,))
    t = parse_task("1,2,3|4,5", 21)
    assert t.steps == ((1, 2, 3), (4, 5))
    assert t.step(1) == Step(index=1, new_classes=(4, 5))
    assert [len(s) for s in parse_task("10-5", 21).steps] == [10, 5, 5]


def test_parse_task_user_sequence():
    t = parse_task("15-2-2-1", 21)
    assert t.steps == (tuple(range(1, 16)), (16, 17), (18, 19), (20,))
    assert parse_task("10-5-5", 21).steps == parse_task("10-5", 21).steps
    assert parse_task("5-2", 10).steps == ((1, 2, 3, 4, 5), (6, 7), (8, 9))   # the generated world's 9 classes
    with pytest.raises(ValueError, match="2\\+2 = 4 classes, but 5 remain"):
        parse_task("15-2-2", 21)


def test_paper_columns_after_several_steps():
    t = parse_task("15-1", 21)
    old, new = t.paper_columns(5)
    assert old == tuple(range(1, 16)) and new == tuple(range(16, 21))
    assert t.paper_columns(2) == (tuple(range(1, 16)), (16, 17))
    assert t.paper_columns(1) == (t.old_model_ids(1), t.new_model_ids(1))   # one step: the step's own columns
    assert t.paper_columns(0) == ((), tuple(range(1, 16)))


@pytest.mark.parametrize("spec", ["15-4", "20-1", "0-5", "15-0", "abc", "15-5-1", "15-0-5", "15-", "1,2|2,3", "1,2|21", "0,1"])
def test_parse_task_errors(spec):
    with pytest.raises(ValueError):
        parse_task(spec, 21)


def test_task_class_groups_and_model_ids():
    t = Task(((1, 2), (3,), (4, 5)))
    assert t.old_classes(0) == () and t.old_classes(2) == (1, 2, 3)
    assert t.seen_classes(1) == (1, 2, 3) and t.future_classes(1) == (4, 5)
    assert t.num_model_classes(2) == 6
    assert t.old_model_ids(2) == (1, 2, 3) and t.new_model_ids(2) == (4, 5)
    with pytest.raises(IndexError):
        t.seen_classes(3)


def test_select_images_disjoint_vs_overlap():
    task = Task(((1, 2), (3,), (4,)))
    present = [{0, 1}, {0, 3}, {0, 1, 3}, {0, 3, 4}, {0, 4}, {0}, {2, 4}]
    assert select_images(present, task, 0, "disjoint") == [0]      # image 2 also holds future class 3
    assert select_images(present, task, 0, "overlap") == [0, 2, 6]
    assert select_images(present, task, 1, "disjoint") == [1, 2]
    assert select_images(present, task, 1, "overlap") == [1, 2, 3]
    assert select_images(present, task, 2, "disjoint") == [3, 4, 6]
    with pytest.raises(ValueError):
        select_images(present, task, 0, "joint")


def test_label_map_future_to_background_and_void_kept():
    task = Task(((2, 1), (3,), (4,)))
    lut = label_map(task, 1, setting="overlap")
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    mask = np.array([[0, 1, 2], [3, 4, 255]], dtype=np.uint8)
    assert lut[mask].tolist() == [[0, 2, 1], [3, 0, 255]]   # task order: 2 -> 1, 1 -> 2; future 4 -> 0
    assert lut[9] == 0                                      # unlisted class -> background
    assert label_map(task, 1, setting="disjoint", keep_old=False)[mask].tolist() == [[0, 0, 0], [3, 0, 255]]
    assert eval_label_map(task, 0)[mask].tolist() == [[0, 2, 1], [0, 0, 255]]


def test_dataset_without_background_shifts_ids():
    task = parse_task("2-1", 3, background_ids=())
    assert task.steps == ((0, 1), (2,))
    lut = label_map(task, 1, setting="overlap")
    assert lut[np.array([0, 1, 2, 255])].tolist() == [1, 2, 3, 255]


def test_tags_and_present_classes():
    present = present_classes(np.array([[0, 3], [255, 5]]))
    assert present == {0, 3, 5}
    tags = tags_from_mask(present, [5, 4, 3])
    assert tags.dtype == np.float32 and tags.tolist() == [1.0, 0.0, 1.0]
