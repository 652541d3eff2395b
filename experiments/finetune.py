"""Fine-tuning strategies, label budgets and transferability scores:
synthetic digits -> scikit-learn digits.

    python experiments/finetune.py --out=/tmp/tljax/finetune --to=experiments/results/finetune

One command, three parts, written to `<to>.md` / `<to>.json`:

1. A similar task: pretrains the small digits CNN on the rendered
   `synth_digits` ten classes (`configs/source_only.py:synth`,
   `--pretrain_steps`), then fine-tunes it on `digits_full` with 1%, 10% and
   100% of its training labels (stratified, the subset seeded like the run)
   under five strategies, 3 seeds each, every run `--steps` long: test
   accuracy on `digits_full:test`, mean with a 95% Student-t interval.
2. A different task: the same grid from a network pretrained on the same
   images with other labels (`data.label_map=parity`: odd or even), so its
   features were never asked to tell the ten digits apart.
3. Which checkpoint to start from: a zoo (networks pretrained on the ten
   classes for several lengths, on parity, on ">= 5", and an untrained
   control) scored with LogME, H-score (features), LEEP and NCE (the
   network's own source-class predictions) on the labelled target examples
   it is then fine-tuned on (`--zoo_fraction`, all of them by default),
   against the accuracy full fine-tuning reaches from it: Spearman's rank
   correlation per score.

Strategies (all from `configs/finetune.py:synth`, TLlib's fine-tuning recipe:
SGD, Nesterov, lr 0.01, the pretrained parts at 0.1x, the rate x0.1 at 60% of
the steps, batch 48):
  linear_probe  backbone and bottleneck frozen (`param_groups` None), the new head trains
  top_block     the first two conv blocks frozen, the last block, bottleneck and head train
  full          every parameter trains
  full+l2_sp    full, plus L2-SP (`configs/l2_sp.py`, TLlib's weights)
  full+bss      full, plus BSS (`configs/bss.py`, TLlib's weights)

Finished runs (a `results.json` in their workdir) are read, not rerun, so an
interrupted grid continues where it stopped.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tljax import features as features_lib  # noqa: E402
from tljax import models, ranking, sweep, train, validators  # noqa: E402
from tljax import workdir as workdir_lib  # noqa: E402
from tljax.data import open_domain, views  # noqa: E402

_OUT = flags.DEFINE_string("out", "/tmp/tljax/finetune", "Directory of the runs.")
_TO = flags.DEFINE_string("to", "experiments/results/finetune",
                          "Prefix of the tables written (.md and .json).")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps of each fine-tuning run.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 1500, "Steps of the pretraining run.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per strategy and label budget.")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.01", "0.1", "1.0"],
                               "Fractions of the target's training labels.")
_ZOO_FRACTION = flags.DEFINE_float(
    "zoo_fraction", 1.0, "Fraction of the target's labels the zoo is scored and fine-tuned on. "
    "H-score needs more examples than feature dimensions (256): with 10% (120 examples) it "
    "is C - 1 = 9 for every network.")

# Pretrained networks: name -> (steps as a multiple of --pretrain_steps,
# data.label_map). `synth` and `parity` are the two guides' starting points;
# every entry is one member of the zoo, with `scratch` (no pretraining).
PRETRAININGS = {
    "synth": (1.0, None),
    "synth_short": (0.2, None),
    "synth_shortest": (0.02, None),
    "parity": (1.0, "parity"),
    "ge5": (1.0, "ge5"),
}
SCRATCH = "scratch"
GUIDES = {"similar": "synth", "different": "parity"}

PRETRAINED = "classifier/(backbone|bottleneck)/.*"
# name: (config module, param_groups or None for the config's own)
STRATEGIES = {
    "linear_probe": ("finetune", ((PRETRAINED, None), (".*", 1.0))),
    "top_block": ("finetune", (("classifier/backbone/(conv|bn)[12]/.*", None), (PRETRAINED, 0.1),
                               (".*", 1.0))),
    "full": ("finetune", None),
    "full+l2_sp": ("l2_sp", None),
    "full+bss": ("bss", None),
}


def pretrain(out: str, name: str) -> str:
  """The workdir of pretraining `name` (see PRETRAININGS), trained if missing."""
  multiple, label_map = PRETRAININGS[name]
  workdir = os.path.join(out, f"pretrain_{name}")
  if not os.path.exists(os.path.join(workdir, "results.json")):
    config = importlib.import_module("configs.source_only").get_config("synth")
    config.total_steps = max(1, round(multiple * _PRETRAIN_STEPS.value))
    config.eval_every = config.checkpoint_every = config.total_steps
    if label_map:
      config.data.label_map = label_map
    train.train_and_evaluate(config, workdir)
  return workdir


def finetune_config(strategy: str, fraction: float, seed: int, pretrained: str | None):
  """`pretrained`: a pretraining workdir, or None to train from scratch."""
  module, param_groups = STRATEGIES[strategy]
  config = importlib.import_module(f"configs.{module}").get_config("synth")
  if pretrained:
    config.model.init = pretrained
  else:
    config.model.init_required = False  # the zoo's scratch member, on purpose
  # 1% of the labels is fewer examples than a batch: repeated within it, as intended.
  config.data.allow_repeats_in_batch = True
  if param_groups is not None:
    config.param_groups = param_groups
  config.seed = seed
  config.data.source_fraction = fraction
  config.data.source_subset_seed = seed
  steps = _STEPS.value
  config.total_steps = config.eval_every = config.checkpoint_every = steps
  config.schedule.boundaries = (int(0.6 * steps),)
  return config


def finetuned_accuracy(workdir: str, strategy: str, fraction: float, seed: int,
                       pretrained: str | None) -> float:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    started = time.time()
    train.train_and_evaluate(finetune_config(strategy, fraction, seed, pretrained), workdir)
    logging.info("%s: %.0f s", workdir, time.time() - started)
  with open(path) as f:
    return json.load(f)["target_accuracy"]


def run_grid(out: str, pretrained: str) -> dict:
  accuracies = {}
  for fraction in (float(f) for f in _FRACTIONS.value):
    for strategy in STRATEGIES:
      for seed in range(_SEEDS.value):
        workdir = os.path.join(out, f"{strategy}_{fraction:g}", f"seed{seed}")
        accuracies.setdefault(f"{fraction:g}", {}).setdefault(strategy, []).append(
            finetuned_accuracy(workdir, strategy, fraction, seed, pretrained))
  return accuracies


def guide_dir(out: str, guide: str) -> str:
  # The similar-task grid keeps the directory layout it was first run with.
  return out if guide == "similar" else os.path.join(out, guide)


# ----------------------------------------------------------------------------
# The zoo: transferability scores against fine-tuned accuracy.
# ----------------------------------------------------------------------------


def extractor(workdir: str | None, layer: str) -> features_lib.Extractor:
  """A pretraining run's classifier, or (None) an untrained one (seed 0)."""
  if workdir:
    return features_lib.from_workdir(workdir, layer)
  config = finetune_config("full", 1.0, 0, None)
  classifier = models.create_classifier(config.model, 10)
  size = config.data.image_size
  variables = classifier.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3), jnp.float32),
                              train=False)
  return features_lib.Extractor(classifier, dict(variables), layer,
                                config.data.eval_preprocess.to_dict(), key="scratch")


def zoo_scores(pretrained: str | None, fraction: float) -> dict[str, float]:
  """Each score on the labelled target examples fine-tuning reads (mean over
  the seeds' subsets)."""
  config = finetune_config("full", fraction, 0, None)
  domain = open_domain(config.source, config.source_split, data_dir=config.data_dir)
  num_classes = 10
  # One pass of the network over the split; each seed's subset indexes it.
  all_features, all_labels = features_lib.extract(extractor(pretrained, "features"), domain)
  all_logits, _ = features_lib.extract(extractor(pretrained, "logits"), domain)
  per_seed = []
  for seed in range(_SEEDS.value):
    kept = views.stratified_indices(all_labels, fraction, seed)
    feats, labels, logits = all_features[kept], all_labels[kept], all_logits[kept]
    probabilities = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    num_source = logits.shape[-1]
    per_seed.append({
        "logme": ranking.logme(feats, labels, num_classes=num_classes),
        "h_score": ranking.h_score(feats, labels, num_classes=num_classes),
        "leep": ranking.leep(probabilities, labels, num_classes=num_classes),
        "nce": ranking.nce(jnp.argmax(probabilities, -1), labels, num_classes=num_classes,
                           num_source_classes=num_source),
    })
  return {k: statistics.fmean(float(s[k]) for s in per_seed) for k in per_seed[0]}


def run_zoo(out: str) -> dict:
  fraction = _ZOO_FRACTION.value
  zoo = {}
  for name in [*PRETRAININGS, SCRATCH]:
    pretrained = None if name == SCRATCH else pretrain(out, name)
    guide = next((g for g, source in GUIDES.items() if source == name), None)
    if guide is not None and f"{fraction:g}" in [f"{float(f):g}" for f in _FRACTIONS.value]:
      base = guide_dir(out, guide)  # the guide's own `full` runs
    else:
      base = os.path.join(out, "zoo", name)
    accuracies = [
        finetuned_accuracy(os.path.join(base, f"full_{fraction:g}", f"seed{seed}"), "full",
                           fraction, seed, pretrained)
        for seed in range(_SEEDS.value)]
    pretrain_steps = workdir_lib.read_config(pretrained).total_steps if pretrained else 0
    zoo[name] = {"pretrain_steps": pretrain_steps,
                 "label_map": PRETRAININGS[name][1] if name in PRETRAININGS else None,
                 "accuracies": accuracies, "accuracy": statistics.fmean(accuracies),
                 "scores": zoo_scores(pretrained, fraction)}
  names = list(zoo)
  accuracy = jnp.asarray([zoo[n]["accuracy"] for n in names])
  correlations = {score: float(validators.spearman(
      jnp.asarray([zoo[n]["scores"][score] for n in names]), accuracy))
                  for score in zoo[names[0]]["scores"]}
  return {"fraction": fraction, "members": zoo, "spearman": correlations}


def labelled_examples(fraction: float) -> int:
  """Training examples kept at `fraction` (the same count for every seed)."""
  config = finetune_config("full", fraction, 0, "")
  domain = open_domain(config.source, config.source_split, data_dir=config.data_dir)
  return len(views.stratified_indices(views.domain_labels(domain), fraction, seed=0))


def render_guide(guide: str, accuracies: dict, pretrained: str) -> tuple[list[str], dict]:
  with open(os.path.join(pretrained, "results.json")) as f:
    pretrain = json.load(f)
  _, label_map = PRETRAININGS[GUIDES[guide]]
  fractions = list(accuracies)
  if label_map is None:
    title = "### A similar task: pretrained on the ten synth_digits classes"
    what = (f"pretrained for {_PRETRAIN_STEPS.value} steps on `synth_digits`'s ten classes "
            f"(its `synth_digits:test` accuracy {100 * pretrain['source_accuracy']:.1f}%, "
            f"on `digits_full:test` without fine-tuning "
            f"{100 * pretrain['target_accuracy']:.1f}%)")
  else:
    title = f"### A different task: pretrained on `{label_map}` labels of the same images"
    what = (f"pretrained for {_PRETRAIN_STEPS.value} steps on `synth_digits` with "
            f"`data.label_map={label_map}` ({views.get_label_map(label_map).class_names}; "
            f"its `synth_digits:test` accuracy on that task "
            f"{100 * pretrain['source_accuracy']:.1f}%), so its features were trained for "
            "another label set")
  lines = [
      title, "",
      f"The small digits CNN {what}, then fine-tuned for {_STEPS.value} steps on a stratified "
      "fraction of `digits_full:train`'s ten-class labels (a new head).", "",
      "| strategy | " + " | ".join(f"{float(f):.0%} labels ({labelled_examples(float(f))})"
                                   for f in fractions) + " |",
      "|---|" + "---|" * len(fractions),
  ]
  summary = {}
  for strategy in STRATEGIES:
    cells = []
    for fraction in fractions:
      values = accuracies[fraction][strategy]
      low, high = sweep.confidence_interval(values)
      mean = statistics.fmean(values)
      summary.setdefault(strategy, {})[fraction] = {"mean": mean, "ci_low": low, "ci_high": high,
                                                    "values": values}
      cells.append(f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]")
    lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
  lines += ["", "Against `full` at the same budget (95% intervals that do not overlap):", ""]
  for fraction in fractions:
    verdicts = []
    for strategy in STRATEGIES:
      if strategy != "full":
        row, baseline = summary[strategy][fraction], summary["full"][fraction]
        verdicts.append(f"{strategy} {sweep.compare(row, baseline)}")
    lines.append(f"* {float(fraction):.0%} labels: " + "; ".join(verdicts) + ".")
  return lines + [""], summary


def render_zoo(zoo: dict) -> list[str]:
  fraction = zoo["fraction"]
  scores = list(zoo["spearman"])
  lines = [
      "### Which checkpoint to start from: transferability scores", "",
      f"Each network of the zoo scored on the labelled `digits_full:train` examples "
      f"({fraction:.0%}" + (", the seeds' subsets, mean" if fraction < 1 else "") +
      ") before fine-tuning, and the test accuracy "
      f"full fine-tuning then reaches from it ({_STEPS.value} steps, mean over "
      f"{_SEEDS.value} seeds). LogME and H-score read the bottleneck features; LEEP and NCE "
      "the network's own predictions over its pretraining classes (the untrained control's "
      "head is random).", "",
      "| network | pretraining | fine-tuned accuracy | " + " | ".join(scores) + " |",
      "|---|---|---|" + "---|" * len(scores),
  ]
  for name, member in zoo["members"].items():
    what = ("none" if not member["pretrain_steps"] else
            f"{member['pretrain_steps']} steps, {member['label_map'] or 'ten classes'}")
    lines.append(f"| {name} | {what} | {100 * member['accuracy']:.1f} | " +
                 " | ".join(f"{member['scores'][s]:.3f}" for s in scores) + " |")
  lines += ["", f"Spearman's rank correlation with the fine-tuned accuracy over the "
            f"{len(zoo['members'])} networks:", "",
            "| " + " | ".join(scores) + " |", "|" + "---|" * len(scores),
            "| " + " | ".join(f"{zoo['spearman'][s]:+.2f}" for s in scores) + " |", ""]
  return lines


def main(argv):
  del argv
  out = _OUT.value
  os.makedirs(out, exist_ok=True)
  lines = [
      "## Fine-tuning on digits_full from pretrained digits networks", "",
      "`python experiments/finetune.py` (this file is its output). Test accuracy (%) on "
      f"`digits_full:test`, mean over {_SEEDS.value} seeds [95% t-interval]; the seed sets the "
      "initialisation of the new head, the data order and which labelled examples are kept. "
      "Intervals are not clipped to [0, 100]; with 3 seeds the t quantile is 4.3.", "",
  ]
  results = {"steps": _STEPS.value, "pretrain_steps": _PRETRAIN_STEPS.value,
             "seeds": _SEEDS.value}
  for guide, source in GUIDES.items():
    pretrained = pretrain(out, source)
    accuracies = run_grid(guide_dir(out, guide), pretrained)
    guide_lines, summary = render_guide(guide, accuracies, pretrained)
    lines += guide_lines
    results[guide] = summary
  results["zoo"] = run_zoo(out)
  lines += render_zoo(results["zoo"])
  markdown = "\n".join(lines)
  os.makedirs(os.path.dirname(_TO.value) or ".", exist_ok=True)
  with open(_TO.value + ".md", "w") as f:
    f.write(markdown)
  with open(_TO.value + ".json", "w") as f:
    json.dump(results, f, indent=2)
  print(markdown)


if __name__ == "__main__":
  app.run(main)
