"""Linear (or MLP) probe: a frozen network's features, cached once, and a head trained on them.

Feature extraction, the cheap transfer recipe: the frozen network runs once
over every split, its pooled features are cached under the workdir
(`feature_cache/`, or `config.features.cache_dir`), and only the head trains.

On the embedded task the frozen network is a trained tljax run's backbone:

    python -m tljax.main --config=configs/source_only.py:digits --workdir=/tmp/tljax/source_only
    python -m tljax.main --config=configs/linear_probe.py:digits --workdir=/tmp/tljax/probe \\
        --config.features.workdir=/tmp/tljax/source_only

On Office-31, an ImageNet ResNet-50:

    python -m tljax.main --config=configs/linear_probe.py:office31 --workdir=/tmp/tljax/probe_a2w \\
        --config.features.init=/path/to/resnet50.safetensors --config.manual_dir=/path/to/office31

`--config.model.head_hidden=512` makes the head an MLP; any method can run on
the features too (`--config.method.name=dann` with its fields).
"""

import ml_collections

from configs import default


def get_config(arg: str = "digits") -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  image_preprocess = config.data.eval_preprocess.to_dict()
  config.features = ml_collections.ConfigDict({
      "workdir": "",  # a tljax run whose latest checkpoint extracts the features
      "model": "resnet50" if arg == "office31" else "",  # or a pretrained backbone...
      "init": "",  # ...and its checkpoint file
      # the pretrained backbone's own arguments (e.g. a ViT's image_size); any
      # key may be set: --config.features.backbone_kwargs.<key>=<value>
      "backbone_kwargs": ml_collections.ConfigDict(),
      "layer": "backbone",  # backbone (pooled) | features (bottleneck) | logits; workdir only
      "image_size": config.data.image_size,
      "eval_preprocess": image_preprocess,  # how images are prepared for the extractor
      "cache_dir": "",  # default: <workdir>/feature_cache
  })
  config.method = ml_collections.ConfigDict({"name": "source_only"})
  config.model.name = "identity"
  config.model.backbone_kwargs = ml_collections.ConfigDict()
  config.model.init = ""
  config.model.bottleneck_dim = 0
  config.model.head_hidden = 0
  config.data.train_preprocess = ml_collections.ConfigDict({"name": "none"})
  config.data.eval_preprocess = ml_collections.ConfigDict({"name": "none"})
  config.data.cache = True
  config.param_groups = [(".*", 1.0)]
  config.total_steps = 500
  config.eval_every = 250
  config.checkpoint_every = 250
  config.schedule.name = "cosine"
  if arg == "office31":
    config.total_steps = 2000
    config.eval_every = 1000
    config.checkpoint_every = 1000
  return config
