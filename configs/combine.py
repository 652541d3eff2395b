"""Any sum of adaptation terms, each with the fields of its own config.

    python -m tljax.main --config=configs/combine.py:dann+entropy_min,digits --workdir=/tmp/tljax/dann_ent
    python -m tljax.main --config=configs/combine.py:cdan+mcc+bsp,office31 --workdir=... \\
        --config.method.bsp.trade_off=1e-4

The argument is `<term>+<term>...,<task>`. The run starts from the first
term's config (its network, optimizer and forward pass); every term's fields
come from `configs/<term>.py` and sit under its name in `config.method`.
"""

import importlib

import ml_collections

from configs import default


def get_config(arg: str = "dann+entropy_min,digits") -> ml_collections.ConfigDict:
  names, _, task = arg.partition(",")
  task = task or "digits"
  parts = names.split("+")
  if len(parts) < 2:
    raise ValueError(f"configs/combine.py:{arg}: name two or more terms joined by '+', "
                     "then ',<task>'")
  modules = {p: importlib.import_module(f"configs.{p}") for p in parts}
  for p, module in modules.items():
    if not hasattr(module, "term"):
      raise ValueError(f"configs/{p}.py defines no adaptation term; terms compose, methods "
                       "with a step of their own do not")
  config = modules[parts[0]].get_config(task)
  config.method = default.terms_method(
      names, config.method.forward, {p: modules[p].term(task) for p in parts},
      pretrain_steps=config.method.pretrain_steps,
      pretrain_lr_scale=config.method.pretrain_lr_scale)
  return config
