"""WARP (Word-level Adversarial ReProgramming): prompt embeddings around the input and class embeddings in place
of the masked-LM head's vocabulary.

Equation:   X' = [P_1..P_k; E(x); E([MASK]); P_k+1..P_n],   h = BERT(X')_[MASK],
            p(y | x) = softmax_y(Θ_y · T(h)),   T = the frozen MLM head's transform (dense → GELU → LayerNorm)
            P_i ∈ R^{d_model} (n = n_virtual_tokens, k = n // 2) and Θ ∈ R^{n_classes × d_model} trained;
            BERT and its MLM head frozen.
Trainable:  (n_virtual_tokens + n_classes) * d_model        (catalog: trainable_params.total)
Paper:      "WARP: Word-level Adversarial ReProgramming", Karen Hambardzumyan et al., 2021 (ACL-IJCNLP 2021),
            arXiv 2101.00121.

BERT-family masked LMs only (the paper uses RoBERTa-large; here BertForMaskedLM). Template: half the prompt
tokens before the sentence, then [MASK], then the other half (the paper's single-sentence template puts prompt
tokens before, between and after; pairs of sentences would get a middle group too, not implemented here).
Initialisation: Θ copies the MLM decoder rows of `verbalizer_token_ids` (the paper's init from class words,
cycled if fewer than n_classes) or, without them, of sampled tokens; the prompt tokens copy sampled vocabulary
embeddings (the authors' code draws them from N(0, 1) or from the embedding matrix's mean and std, or copies the
words of a human-readable prompt). No class bias: the paper's verbalizer is a dot product with the class
embeddings (the authors' code uses a linear layer with a bias, n_classes parameters more).
Labels: class ids of shape (B,). A per-token label tensor (B, T), as in the repository's language-model
batches, is read as class labels labels[:, 0] % n_classes (a convention for the shared tests, not the paper's).
Not mergeable: the prompt is input and Θ replaces the output layer.
Checked against: the authors' code github.com/YerevaNN/WARP @32b455fa: arp/models.py (the verbalizer is
torch.nn.Linear(d, n_labels, bias=classifier_bias) on the pooled [MASK] representation; classifier_init
copies the embedding rows of the class words, and lm_head.bias into the bias when there is one) and
arp/injector.py (prompt embeddings drawn from N(mean, std) of the embedding matrix, or copied from
given words). The paper's abstract was read, not its method section. The test pins the logits as
Θ · T(h_[MASK]) recomputed from the frozen MLM transform.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from reference_impls._core import family, freeze_base
from reference_impls._prompts import check_positions, vocab_init


@dataclass
class WarpConfig:
    n_virtual_tokens: int = 20                   # prompt tokens, half before the input and half after [MASK]
    n_classes: int = 2                           # classes, one trainable embedding Θ_y each
    mask_token_id: int = 103                     # the [MASK] token (bert-base-uncased's id)
    verbalizer_token_ids: tuple[int, ...] = ()   # tokens whose output embeddings start Θ (cycled); () = sampled


class WarpModel(nn.Module):
    def __init__(self, model: nn.Module, config: WarpConfig) -> None:
        super().__init__()
        if family(model) != "bert" or not hasattr(model, "cls"):
            raise ValueError("WARP needs a BERT-style masked LM (BertForMaskedLM)")
        self.model = model
        self.config = model.config
        self.mask_token_id = config.mask_token_id
        self.n_before = config.n_virtual_tokens // 2
        self.prompt_embeddings = nn.Parameter(vocab_init(model, config.n_virtual_tokens))  # (n, d_model)
        decoder = model.cls.predictions.decoder.weight  # (V, d_model), tied to the input embeddings in BERT
        if config.verbalizer_token_ids:
            ids = torch.tensor(config.verbalizer_token_ids)
            ids = ids[torch.arange(config.n_classes) % len(ids)]
        else:
            ids = torch.randint(decoder.shape[0], (config.n_classes,))
        self.class_embeddings = nn.Parameter(decoder[ids].detach().clone())  # Θ: (n_classes, d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        B, T = input_ids.shape
        check_positions(self.model.config, self.prompt_embeddings.shape[0] + 1, T)  # the prompt and [MASK]
        E = self.model.get_input_embeddings()
        x = E(input_ids)  # (B, T, d_model)
        mask = E(torch.full((B, 1), self.mask_token_id, device=input_ids.device))  # (B, 1, d_model)
        P = self.prompt_embeddings.expand(B, -1, -1).to(x.dtype)  # (B, n, d_model)
        k = self.n_before
        seq = torch.cat([P[:, :k], x, mask, P[:, k:]], dim=1)  # (B, n+T+1, d_model)
        if attention_mask is not None:
            ones = attention_mask.new_ones(B, 1)
            attention_mask = torch.cat([ones.expand(B, k), attention_mask, ones,
                                        ones.expand(B, P.shape[1] - k)], dim=1)  # (B, n+T+1)
        h = self.model.base_model(inputs_embeds=seq, attention_mask=attention_mask, **kwargs).last_hidden_state
        z = self.model.cls.predictions.transform(h[:, k + T])  # T(h_[MASK]): (B, d_model)
        logits = z @ self.class_embeddings.T  # (B, n_classes)
        loss = None
        if labels is not None:
            if labels.dim() == 2:  # language-model batches: see the module docstring
                labels = labels[:, 0] % logits.shape[-1]
            loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def apply(model: nn.Module, config: WarpConfig) -> nn.Module:
    vocab = model.config.vocab_size
    bad = [t for t in (config.mask_token_id, *config.verbalizer_token_ids) if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {vocab} "
                         "(set mask_token_id / verbalizer_token_ids for this tokenizer)")
    freeze_base(model)
    return WarpModel(model, config)
