"""esmtune's heads as transformers' ``EsmForSequenceClassification`` / ``...TokenClassification``.

With ``model.head: esm`` the classifier is layer for layer what ``EsmForSequenceClassification``
computes (the ``<cls>`` state, dense, tanh, out_proj), so an ``hf`` export can be a folder that
``AutoModelForSequenceClassification`` loads with no esmtune code. What the task adds after the
logits is folded into the weights where it can be, so the usual recipe gives the run's numbers;
each task says how (:meth:`~esmtune.tasks.TaskSpec.hf_output_layer`, ``hf_problem_type``): e.g.
binary's one logit z becomes two logits (0, z), whose softmax is (1 - σ(z), σ(z)), and
regression's target standardisation is folded into ``out_proj``.

A per-residue run whose ``mlp`` head has no hidden layers (``model.head_hidden=[]``) is dropout
then one linear layer on every residue state: ``EsmForTokenClassification``'s classifier. Heads
with hidden layers, and the ``cnn`` head, have no transformers equivalent.

Decision thresholds tuned on validation (binary, multilabel) stay esmtune's: plain transformers
users get them from ``esmtune_head.safetensors``'s metadata or the model card.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import EsmForSequenceClassification, EsmForTokenClassification

from esmtune.errors import EsmtuneError
from esmtune.model.classifier import SequenceClassifier
from esmtune.model.heads import MLPHead
from esmtune.tasks import TaskSpec

__all__ = ["to_sequence_classification", "to_token_classification", "token_classifier_layer"]


def to_sequence_classification(
    model: SequenceClassifier, task: TaskSpec
) -> EsmForSequenceClassification:
    """The classifier (backbone merged, on CPU) as an ``EsmForSequenceClassification``.

    Raises:
        EsmtuneError: When the classifier's head is not the ``esm`` head.
    """
    layers = list(model.head.layers) if isinstance(model.head, MLPHead) else []
    hidden = model.backbone_config.hidden_size
    dense, out = (layers[1], layers[-1]) if layers else (None, None)
    if (
        model.pooler.pooling.value != "cls"
        or len(layers) != 5
        or not isinstance(dense, nn.Linear)
        or not isinstance(out, nn.Linear)
        or dense.out_features != hidden
    ):
        raise EsmtuneError(
            "only a run trained with model.head=esm (and model.pooling=cls) has the head of "
            "EsmForSequenceClassification"
        )
    config = copy.deepcopy(model.backbone_config)
    config.architectures = ["EsmForSequenceClassification"]
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {label: i for i, label in enumerate(task.labels)}
    config.problem_type = task.hf_problem_type
    classifier = EsmForSequenceClassification(config)
    classifier.esm.load_state_dict(model.backbone.state_dict())
    classifier.classifier.dense.load_state_dict(dense.state_dict())
    weight, bias = task.hf_output_layer(out.weight.detach(), out.bias.detach())
    with torch.no_grad():
        classifier.classifier.out_proj.weight.copy_(weight)
        classifier.classifier.out_proj.bias.copy_(bias)
    return classifier.eval()


def token_classifier_layer(model: SequenceClassifier) -> nn.Linear | None:
    """The head's one linear layer when the head is ``EsmForTokenClassification``'s, else None.

    That is a per-residue model whose ``mlp`` head has no hidden layers (dropout, linear).
    """
    if not getattr(model, "per_residue", False) or not isinstance(model.head, MLPHead):
        return None
    layers = list(model.head.layers)
    return layers[1] if len(layers) == 2 and isinstance(layers[1], nn.Linear) else None


def to_token_classification(model: SequenceClassifier, task: TaskSpec) -> EsmForTokenClassification:
    """A per-residue classifier (backbone merged, on CPU) as an ``EsmForTokenClassification``.

    Raises:
        EsmtuneError: When the head is not a single linear layer on each residue.
    """
    out = token_classifier_layer(model)
    if out is None:
        raise EsmtuneError(
            "only a per-residue run with model.head=mlp and model.head_hidden=[] has the head of "
            "EsmForTokenClassification"
        )
    config = copy.deepcopy(model.backbone_config)
    config.architectures = ["EsmForTokenClassification"]
    config.id2label = dict(enumerate(task.labels))
    config.label2id = {label: i for i, label in enumerate(task.labels)}
    config.problem_type = task.hf_problem_type
    classifier = EsmForTokenClassification(config)
    classifier.esm.load_state_dict(model.backbone.state_dict())
    weight, bias = task.hf_output_layer(out.weight.detach(), out.bias.detach())
    with torch.no_grad():
        classifier.classifier.weight.copy_(weight)
        classifier.classifier.bias.copy_(bias)
    return classifier.eval()
