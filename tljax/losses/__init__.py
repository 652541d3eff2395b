"""Discrepancy, domain-adaptation and fine-tuning losses: pure, jittable functions of arrays.

Each follows TLlib's implementation by default; deviations are keyword options
documented where they are defined. Training code composes them (see
`tljax.methods`); they know nothing of training.
"""

from tljax.losses.adversarial import (domain_accuracy, domain_adversarial_loss,
                                      gradient_reversal, inverted_label_loss, scale_gradient,
                                      warm_start_coeff)
from tljax.losses.afn import adaptive_feature_norm
from tljax.losses.bnm import bnm
from tljax.losses.bsp import bsp
from tljax.losses.cdan import (entropy_weights, init_randomized_map, multilinear_map,
                               randomized_multilinear_map)
from tljax.losses.coral import cmd, coral
from tljax.losses.domains import (domain_risks, gaussian_mmd, group_dro_weights, irm_penalty,
                                  moment_distance, pairwise_coral, prediction_disagreement,
                                  risk_variance)
from tljax.losses.entropy import entropy, entropy_loss
from tljax.losses.information_maximization import information_maximization
from tljax.losses.jmmd import jmmd
from tljax.losses.kernels import GaussianKernel, gaussian_kernel_matrices, kernel_bank
from tljax.losses.lmmd import lmmd, lmmd_weights
from tljax.losses.mcc import mcc
from tljax.losses.mcd import classifier_discrepancy, mcd_entropy
from tljax.losses.mdd import mdd, regression_mdd, shift_log
from tljax.losses.mmd import (dan_kernel_weights, kernel_mmd, max_test_power_weights, mk_mmd,
                              mmd)
from tljax.losses.open_set import unknown_class_bce
from tljax.losses.regularization import (attention_behavioral_regularization,
                                         batch_spectral_shrinkage, behavioral_regularization,
                                         category_relationship, channel_attention,
                                         co_tuning_loss, l2, starting_point_l2)
from tljax.losses.reweight import (class_weighted_cross_entropy, iwan_importance_weights,
                                   pada_adversarial_weights, pada_class_weights, uan_normalize,
                                   uan_transferability)
from tljax.losses.rsd import rsd, subspace_distance
from tljax.losses.self_training import (class_balance_loss, confidence_self_training_loss,
                                        l2_consistency_loss)
from tljax.losses.semi_supervised import (enqueue_per_class, flexmatch_thresholds,
                                          pseudo_group_contrastive, sigmoid_warm_up,
                                          soft_cross_entropy, strong_weak_consistency,
                                          tsa_cross_entropy, tsa_threshold,
                                          worst_case_estimation)

__all__ = [
    "GaussianKernel", "kernel_bank", "gaussian_kernel_matrices",
    "kernel_mmd", "mk_mmd", "mmd", "dan_kernel_weights", "max_test_power_weights",
    "jmmd",
    "coral", "cmd",
    "domain_risks", "irm_penalty", "risk_variance", "group_dro_weights", "pairwise_coral",
    "moment_distance", "gaussian_mmd", "prediction_disagreement",
    "scale_gradient", "gradient_reversal", "warm_start_coeff",
    "domain_adversarial_loss", "domain_accuracy", "inverted_label_loss",
    "multilinear_map", "randomized_multilinear_map", "init_randomized_map", "entropy_weights",
    "mcc", "mdd", "regression_mdd", "shift_log", "rsd", "subspace_distance",
    "bsp", "adaptive_feature_norm", "entropy", "entropy_loss",
    "bnm", "lmmd", "lmmd_weights", "classifier_discrepancy", "mcd_entropy",
    "confidence_self_training_loss", "l2_consistency_loss", "class_balance_loss",
    "information_maximization",
    "pada_class_weights", "class_weighted_cross_entropy", "pada_adversarial_weights",
    "iwan_importance_weights", "uan_transferability", "uan_normalize", "unknown_class_bce",
    "sigmoid_warm_up", "strong_weak_consistency", "tsa_threshold", "tsa_cross_entropy",
    "flexmatch_thresholds", "worst_case_estimation", "pseudo_group_contrastive",
    "enqueue_per_class", "soft_cross_entropy",
    "l2", "starting_point_l2", "behavioral_regularization", "attention_behavioral_regularization",
    "channel_attention", "batch_spectral_shrinkage", "co_tuning_loss", "category_relationship",
]
