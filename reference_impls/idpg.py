"""IDPG (Instance-Dependent Prompt Generation): a small generator maps each input's sentence representation to
its own soft prompt.

Equation:   P(x) = W_2 σ(W_1 M(x) + b_1) + b_2,  reshaped to (n_virtual_tokens, d_model);  X' = [P(x); E(x)]
            M(x) ∈ R^{d_model}: the frozen model's own last hidden state of the first token ([CLS]/<s>), or
            the mean over the input's tokens on decoder-only models (see sentence_pooling);
            W_1 ∈ R^{generator_hidden × d_model}, W_2 ∈ R^{n_virtual_tokens·d_model × generator_hidden},
            σ = GELU (the authors' code; erf form).
Trainable:  (d_model + 1) * generator_hidden + (generator_hidden + 1) * n_virtual_tokens * d_model
            (catalog: trainable_params.total; the two linear layers with their biases)
Paper:      "IDPG: An Instance-Dependent Prompt Generation Method", Zhuofeng Wu et al., 2022 (NAACL 2022),
            arXiv 2204.04497.

M(x) costs one extra forward pass of the frozen model, without the prompt and without gradients (the
paper's choice of using the pre-trained model itself as the sentence encoder); on T5 it is the encoder's
output. sentence_pooling="auto" takes the first token's state on bidirectional encoders (BERT, T5's encoder),
as in the RoBERTa setting, and the mean over the real tokens on decoder-only models, whose first token sees
only itself. Initialisation (our choice, so that training starts where prompt tuning does): W_1 and b_1 as
nn.Linear, W_2 zero and b_2 a copy of sampled vocabulary embeddings, so at the start every input gets the
same vocab-initialised prompt and the generator learns to make it instance-dependent.
Left out: the multi-layer variant (M-IDPG, prompts generated for every layer) and the parameterised
hypercomplex (PHM) generator; only the single-layer variant with a dense generator (S-IDPG-DNN) is here.
Not mergeable: the prompt is input, not weight.

Checked against: the authors' code github.com/CSerxy/IDPG @691b282e (fairseq/models/roberta/model.py,
sbert_mode 3: M(x) = the last hidden state of the first token, generation_dense d -> 256, gelu,
generation_out_proj 256 -> suffix_len · d, reshaped to (suffix_len, d); suffix_len defaults to 5 in
transformer_sentence_encoder.py). Found and fixed: σ was tanh; the authors' generator uses gelu.
Left out: their dropout 0.1 on M(x) and on the hidden layer, and their init (init_bert_params, normal
0.02) in favour of the prompt-tuning start described above. The paper's text was not re-read in this
pass. peft has no IDPG. Numeric pin: test_idpg.py re-computes W_2 GELU(W_1 M(x) + b_1) + b_2 on the
frozen model's own representation by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import family, freeze_base
from reference_impls._prompts import PromptedModel, mean_pool, vocab_init


@dataclass
class IdpgConfig:
    n_virtual_tokens: int = 5      # length t of the generated prompt
    generator_hidden: int = 256    # bottleneck size m of the generator
    sentence_pooling: str = "auto"  # M(x): first (token 0's state) | mean | auto (first on encoders, else mean)


def sentence_representation(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                            pooling: str = "auto") -> torch.Tensor:
    """M(x) from the frozen model's last hidden states, without gradients. (B, T) -> (B, d_model)"""
    fam = family(model)
    if pooling == "auto":
        pooling = "first" if fam in ("bert", "t5") else "mean"
    with torch.no_grad():
        if fam == "t5":
            h = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            h = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-1]
    if pooling == "first":
        return h[:, 0]  # (B, d_model)
    if pooling == "mean":
        return mean_pool(h, attention_mask)  # (B, d_model)
    raise ValueError(f"unknown sentence_pooling '{pooling}'; use first, mean or auto")


class PromptGenerator(nn.Module):
    def __init__(self, d_model: int, config: IdpgConfig, init_prompt: torch.Tensor) -> None:
        super().__init__()
        self.P, self.d = config.n_virtual_tokens, d_model
        self.down = nn.Linear(d_model, config.generator_hidden)  # W_1, b_1
        self.up = nn.Linear(config.generator_hidden, config.n_virtual_tokens * d_model)  # W_2, b_2
        with torch.no_grad():  # W_2 = 0, b_2 = vocab rows: the generator starts as a prompt-tuning prompt
            self.up.weight.zero_()
            self.up.bias.copy_(init_prompt.reshape(-1))

    def forward(self, m: torch.Tensor) -> torch.Tensor:  # (B, d_model) -> (B, P, d_model)
        return self.up(nn.functional.gelu(self.down(m))).view(-1, self.P, self.d)  # (B, P, d_model)


class IdpgModel(PromptedModel):
    def __init__(self, model: nn.Module, config: IdpgConfig) -> None:
        super().__init__(model)
        d = model.get_input_embeddings().weight.shape[1]
        self.generator = PromptGenerator(d, config, vocab_init(model, config.n_virtual_tokens))
        self.sentence_pooling = config.sentence_pooling

    def prompt(self, input_ids: torch.Tensor, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        m = sentence_representation(self.model, input_ids, attention_mask, self.sentence_pooling)  # (B, d_model)
        return self.generator(m.to(x.dtype))  # (B, P, d_model): one prompt per input


def apply(model: nn.Module, config: IdpgConfig) -> nn.Module:
    freeze_base(model)
    return IdpgModel(model, config)
