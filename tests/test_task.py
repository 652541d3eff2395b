"""The task contract (`tljax/data/task.py`, `train.open_data`): label sets,
open-set measures, several labelled domains, held-out domains, the
semi-supervised split and training-domain hold-outs."""

import json
import os
import sys

import ml_collections
import numpy as np
import pytest

from conftest import REPO
from tljax import evaluation, train
from tljax.data import task as task_lib
from tljax.data import views

sys.path.insert(0, str(REPO))
from configs import dann as dann_config  # noqa: E402  pylint: disable=g-import-not-at-top

DIGITS = tuple(str(i) for i in range(10))


# ----------------------------------------------------------------------------
# Class selections and the label space.
# ----------------------------------------------------------------------------


def test_select_classes_reads_names_indices_and_ranges():
  names = ("cat", "dog", "3", "fish", "owl")
  assert task_lib.select_classes("", names, field="f") == (0, 1, 2, 3, 4)
  assert task_lib.select_classes("dog,owl", names, field="f") == (1, 4)
  assert task_lib.select_classes("0-1, 4", names, field="f") == (0, 1, 4)
  # A class name wins over the same text read as an index: '3' is class 2.
  assert task_lib.select_classes("3", names, field="f") == (2,)
  assert task_lib.select_classes(["fish", "0"], names, field="f") == (0, 3)
  with pytest.raises(ValueError, match="'horse' is not a class name.*cat, dog"):
    task_lib.select_classes("cat,horse", names, field="config.data.source_classes")
  with pytest.raises(ValueError, match="index 5 is out of range.*5 classes"):
    task_lib.select_classes("2-7", names, field="f")


@pytest.mark.parametrize("source,target,setting", [
    (DIGITS, DIGITS, "closed_set"),
    (DIGITS, DIGITS[:5], "partial"),
    (DIGITS[:6], DIGITS, "open_set"),
    (DIGITS[:7], DIGITS[3:], "universal"),
])
def test_label_space_checks_the_declared_setting(source, target, setting):
  labels = task_lib.label_space(source, target, setting=setting, source="s", target="t")
  assert labels.names == source
  assert [labels.names[i] for i in labels.target_classes] == [c for c in source if c in target]
  for other in set(task_lib.SETTINGS) - {setting}:
    with pytest.raises(ValueError, match=f"which is the {setting} setting.*--config.setting={setting}"):
      task_lib.label_space(source, target, setting=other, source="s", target="t")


def test_open_set_models_have_an_unknown_output_and_universal_ones_do_not():
  open_set = task_lib.label_space(DIGITS[:6], DIGITS, setting="open_set", source="s", target="t")
  universal = task_lib.label_space(DIGITS[:7], DIGITS[3:], setting="universal", source="s",
                                   target="t")
  assert (open_set.num_outputs, open_set.unknown_label, open_set.primary_metric) == (7, 6, "h_score")
  assert (universal.num_outputs, universal.unknown_label) == (7, 7)
  table = task_lib.target_table(DIGITS, universal)
  np.testing.assert_array_equal(table, [0, 1, 2, 3, 4, 5, 6, 7, 7, 7])


# ----------------------------------------------------------------------------
# Measures, against hand-worked examples.
# ----------------------------------------------------------------------------


def test_open_set_measures_by_hand():
  # Two known classes (0, 1) and unknown (2). Class 0: 3 examples, 2 right;
  # class 1: 2 examples, 1 right; unknown: 4 examples, 3 rejected.
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  predicted = np.array([0, 0, 2, 1, 0, 2, 2, 2, 1])
  report = evaluation.open_set_report(predicted, labels, num_known=2)
  os_star = (2 / 3 + 1 / 2) / 2  # 0.58333
  unk = 3 / 4
  assert report["os_star"] == pytest.approx(os_star)
  assert report["unk"] == pytest.approx(unk)
  assert report["os"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
  assert report["h_score"] == pytest.approx(2 * os_star * unk / (os_star + unk))  # 0.65625
  assert report["h_score"] == pytest.approx(0.65625)
  assert report["accuracy"] == pytest.approx(6 / 9)
  assert report["per_class_accuracy"] == pytest.approx([2 / 3, 1 / 2, 3 / 4])


def test_open_set_h_score_is_zero_when_nothing_is_rejected():
  report = evaluation.open_set_report(np.array([0, 1, 1, 0]), np.array([0, 1, 2, 2]), 2)
  assert (report["os_star"], report["unk"], report["h_score"]) == (1.0, 0.0, 0.0)


def test_regression_report_by_hand():
  outputs = np.array([[0.5, 0.0], [1.0, 1.0]])
  targets = np.array([[0.0, 0.0], [1.0, 0.5]])
  pred = evaluation.Predictions(np.zeros((2, 1)), outputs, targets)
  report = evaluation.regression_report(pred, ("scale", "x"))
  assert report["mae_per_factor"] == pytest.approx({"scale": 0.25, "x": 0.25})
  assert report["mae"] == pytest.approx(0.25)
  assert report["rmse"] == pytest.approx(np.sqrt((0.25 + 0.25) / 4))


# ----------------------------------------------------------------------------
# Views: the semi-supervised split and hold-outs.
# ----------------------------------------------------------------------------


def test_labelled_split_is_class_balanced_seeded_and_disjoint(digits_data_dir):
  from tljax.data import open_domain
  domain = open_domain("digits", "train", data_dir=digits_data_dir, cache=True)
  labelled, rest = task_lib.split_labelled(domain, 4, seed=3)
  labels = views.domain_labels(labelled)
  assert np.bincount(labels, minlength=10).tolist() == [4] * 10
  assert len(labelled) + len(rest) == len(domain)
  again, _ = task_lib.split_labelled(domain, 4, seed=3)
  other, _ = task_lib.split_labelled(domain, 4, seed=4)
  first = [labelled.source[i]["image"].tobytes() for i in range(len(labelled))]
  assert first == [again.source[i]["image"].tobytes() for i in range(len(again))]
  assert first != [other.source[i]["image"].tobytes() for i in range(len(other))]
  rest_images = {rest.source[i]["image"].tobytes() for i in range(len(rest))}
  assert not rest_images & set(first)


def test_holdout_is_stratified_and_disjoint(digits_data_dir):
  from tljax.data import open_domain
  domain = open_domain("digits", "train", data_dir=digits_data_dir, cache=True)
  train_part, held = task_lib.holdout(domain, 0.2, seed=0)
  counts = np.bincount(views.domain_labels(domain), minlength=10)
  held_counts = np.bincount(views.domain_labels(held), minlength=10)
  np.testing.assert_array_equal(held_counts, np.round(0.2 * counts).astype(int))
  assert len(train_part) + len(held) == len(domain)


# ----------------------------------------------------------------------------
# open_data: the config's task.
# ----------------------------------------------------------------------------


def _labels_of(domain) -> np.ndarray:
  return views.domain_labels(domain)


def test_partial_target_keeps_its_classes_under_the_source_indices(make_config, tmp_path):
  config = make_config(**{"data.label_sets": "digits_partial"})
  domains = train.open_data(config, str(tmp_path))
  assert domains.labels.setting == "partial" and domains.num_classes == 10
  assert set(_labels_of(domains.target_train)) == {0, 1, 2, 3, 4}
  assert set(_labels_of(domains.target_eval)) == {0, 1, 2, 3, 4}
  assert set(_labels_of(domains.source_train)) == set(range(10))


def test_open_set_target_private_classes_are_one_unknown_label(make_config, tmp_path):
  config = make_config(**{"data.label_sets": "digits_open_set"})
  domains = train.open_data(config, str(tmp_path))
  assert domains.num_classes == 7  # 6 known + the unknown output
  assert set(_labels_of(domains.source_train)) == set(range(6))
  target = _labels_of(domains.target_eval)
  assert set(target) == set(range(7))
  # Every raw target example of digits 6-9 reads as unknown (6).
  from tljax.data import open_domain
  raw = views.domain_labels(open_domain("digits_m", "test", data_dir=config.data_dir))
  assert np.sum(target == 6) == np.sum(raw >= 6)


def test_target_private_labels_never_reach_the_step(make_config, tmp_path):
  config = make_config(**{"data.label_sets": "digits_universal"})
  config.method = dann_config.get_config("digits").method
  domains = train.open_data(config, str(tmp_path))
  setup = train.build(config, domains.num_classes, _mesh(), domains.input_shape,
                      labels=domains.labels, num_target_examples=len(domains.target_train))
  batch = next(train.train_batches(config, domains, setup.method, 0, _batch_sharding()))
  assert "label" not in batch["target"] and "label" in batch["source"]
  assert set(np.asarray(batch["source"]["label"])) <= set(range(7))


@pytest.mark.parametrize("setting", ["partial", "open_set"])
def test_undeclared_label_sets_stop_with_the_setting_to_choose(make_config, tmp_path, setting):
  classes = {"partial": {"data.target_classes": "0-4"},
             "open_set": {"data.source_classes": "0-5"}}[setting]
  config = make_config(**classes)
  with pytest.raises(ValueError, match=f"--config.setting={setting}") as info:
    train.open_data(config, str(tmp_path))
  assert "\n" not in str(info.value)
  config.setting = setting
  assert train.open_data(config, str(tmp_path)).labels.setting == setting


def test_labelled_domains_are_sampled_per_domain(make_config, tmp_path):
  config = make_config(source="digits,digits_m", target="", test_domains="")
  config.method.name = "source_only"
  domains = train.open_data(config, str(tmp_path))
  assert domains.num_source_domains == 2 and domains.target_train is None
  setup = train.build(config, domains.num_classes, _mesh(), domains.input_shape,
                      labels=domains.labels, num_source_domains=2, has_target=False)
  batches = train.train_batches(config, domains, setup.method, 0, _batch_sharding())
  for _ in range(2):
    source = next(batches)["source"]
    counts = np.bincount(np.asarray(source["domain"]), minlength=2)
    assert counts.tolist() == [config.batch_size] * 2
  # Domain 0 draws what a single-source run draws.
  single = make_config()
  single_domains = train.open_data(single, str(tmp_path))
  single_batch = next(train.train_batches(single, single_domains, setup.method, 0,
                                          _batch_sharding()))["source"]
  first = next(train.train_batches(config, domains, setup.method, 0, _batch_sharding()))["source"]
  where = np.asarray(first["domain"]) == 0
  np.testing.assert_array_equal(np.asarray(first["image"])[where], np.asarray(single_batch["image"]))


def test_ssl_protocol_labels_n_per_class_and_the_rest_is_unlabelled(make_config, tmp_path):
  config = make_config(target="digits", target_split="train", eval_target_split="test",
                       **{"data.labels_per_class": 3})
  domains = train.open_data(config, str(tmp_path))
  assert np.bincount(_labels_of(domains.source_train)).tolist() == [3] * 10
  full = len(domains.source_train) + len(domains.target_train)
  from tljax.data import open_domain
  assert full == len(open_domain("digits", "train", data_dir=config.data_dir))


def test_a_method_that_reads_a_target_refuses_a_task_without_one(make_config, tmp_path):
  config = make_config(target="", test_domains="digits_m")
  config.method = dann_config.get_config("digits").method
  with pytest.raises(ValueError, match="reads an unlabelled target domain.*config.target is empty"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "run.json")


# ----------------------------------------------------------------------------
# End to end.
# ----------------------------------------------------------------------------


def test_open_set_run_reports_the_h_score(make_config, tmp_path):
  config = make_config(**{"data.label_sets": "digits_open_set"})
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  report = results["target_report"]
  assert results["primary_metric"]["name"] == "target_h_score"
  assert results["primary_metric"]["value"] == report["h_score"]
  os_star, unk = report["os_star"], report["unk"]
  expected = 0.0 if 0 in (os_star, unk) else 2 * os_star * unk / (os_star + unk)
  assert report["h_score"] == pytest.approx(expected)
  assert len(report["per_class_accuracy"]) == 7


@pytest.mark.parametrize("method,source,held_out,examples", [
    ("source_only", "digits", "digits_m", 298),
    # A DG method on two labelled domains (disjoint halves of the digits: the
    # held-out domain reuses their images, which matters to accuracy, not here).
    ("groupdro", "digits,digits_m", "digits_full", 599),
])
def test_held_out_domains_are_read_only_by_the_final_evaluation(make_config, tmp_path,
                                                                 monkeypatch, method, source,
                                                                 held_out, examples):
  config = make_config(source=source, target="", test_domains=held_out)
  config.method = ml_collections.ConfigDict({"name": method})
  if method == "groupdro":
    config.method.eta = 0.01
  reads = []
  opened = train.open_data

  def open_with_a_watched_test_domain(config, workdir):
    domains = opened(config, workdir)
    test = domains.tests[held_out]

    class Watched:
      def __len__(self):
        return len(test.source)

      def __getitem__(self, i):
        reads.append(train_step_now())
        return test.source[i]

      def get_batch(self, indices):
        reads.append(train_step_now())
        return views._read(test.source, indices)  # pylint: disable=protected-access

    import dataclasses
    return dataclasses.replace(domains, tests={held_out: dataclasses.replace(test, source=Watched())})

  steps_done = []
  original = train._train  # pylint: disable=protected-access

  def recorded(*args, **kwargs):
    out = original(*args, **kwargs)
    steps_done.append(int(out[0].step))
    return out

  def train_step_now():
    return steps_done[-1] if steps_done else -1

  monkeypatch.setattr(train, "open_data", open_with_a_watched_test_domain)
  monkeypatch.setattr(train, "_train", recorded)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert reads and set(reads) == {config.total_steps}  # only after training ended
  test = results["test"]
  assert test["final"]["domains"][held_out]["num_examples"] == examples
  picked = test["selected"]["source_accuracy"]
  assert results["primary_metric"] == {"name": "test_accuracy", "value": picked["primary"],
                                       "higher_is_better": True,
                                       "selection": "training-domain validation"}
  with open(tmp_path / "run" / "results.json") as f:
    assert json.load(f)["test"]["selected"]["source_accuracy"]["step"] == picked["step"]


def _mesh():
  import jax
  return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


def _batch_sharding():
  from jax.sharding import NamedSharding, PartitionSpec as P
  return NamedSharding(_mesh(), P("data"))


def test_sweep_tabulates_each_run_by_its_primary_measure_in_its_direction():
  from tljax import sweep
  def run(seed, mae):
    return {"primary_metric": {"name": "target_mae", "value": mae, "higher_is_better": False},
            "_seed": seed}
  assert sweep.run_value(run(0, 0.2)) == 0.2  # an error stays as it is
  assert sweep.run_value({"primary_metric": {"name": "target_h_score", "value": 0.5,
                                             "higher_is_better": True}}) == 50.0
  assert sweep.run_value({"target_accuracy": 0.25}) == 25.0  # results before primary_metric
  row = {"by_seed": {0: 0.10, 1: 0.12, 2: 0.11}, "higher_is_better": False}
  baseline = {"by_seed": {0: 0.20, 1: 0.21, 2: 0.22}}
  # Lower error than the baseline on every seed: better.
  assert sweep.paired_difference(row, baseline)["verdict"] == "better"
  assert sweep.paired_difference({**row, "higher_is_better": True}, baseline)["verdict"] == "worse"


def test_leave_one_domain_out_columns():
  from tljax import sweep
  tasks = sweep.leave_one_domain_out(["a", "b", "c"])
  assert tasks == {"→a": {"source": "b,c", "target": "", "test_domains": "a"},
                   "→b": {"source": "a,c", "target": "", "test_domains": "b"},
                   "→c": {"source": "a,b", "target": "", "test_domains": "c"}}
  multi = sweep.leave_one_domain_out(["a", "b"], target=True, name="{held_out}")
  assert multi["a"] == {"source": "b", "target": "a", "test_domains": ""}
