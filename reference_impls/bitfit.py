"""BitFit: Bias-terms Fine-tuning.

Equation:   every layer keeps its frozen weight and trains its bias:  h = W0 x + b,  only b ∈ R^{d_out} trained
            (LayerNorm's additive bias β counts as a bias term too)
Trainable:  n_bias, every bias parameter of the base model; 0 for bias-free models such as Llama or T5
            (catalog: trainable_params.total)
Paper:      "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models",
            Elad Ben Zaken et al., 2021 (ACL 2022), arXiv 2106.10199.

Nothing is added to the network, so the model starts as the base model and inference is unchanged;
"merging" is a no-op because the trained biases already live in the base layers. The paper also trains
the task head; a head that is newly initialised should be unfrozen by the caller.

Checked against: the authors' code github.com/benzakenelad/BitFit @7ead19a8 (glue_evaluator.py:
BIAS_TERMS_DICT 'all' = every parameter whose name contains 'bias', i.e. b_q, b_k, b_v, b_m1..b_m3 and
both LayerNorm biases per layer plus the embedding LayerNorm and pooler biases; _deactivate_relevant_
gradients freezes everything else except the classifier). The paper's text was not re-read in this pass;
its bias list is the one the code's LaTeX labels name. peft has no BitFit. Numeric pin: test_bitfit.py
checks that the trained set is exactly the set of `*.bias` parameters and the count on a bias-free model.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from reference_impls._core import freeze_base


@dataclass
class BitFitConfig:
    pass  # the method has no hyperparameters


def is_bias(name: str) -> bool:
    return name.split(".")[-1] == "bias"


def apply(model: nn.Module, config: BitFitConfig) -> nn.Module:
    freeze_base(model)
    for name, p in model.named_parameters():
        if is_bias(name):
            p.requires_grad_(True)
    return model
