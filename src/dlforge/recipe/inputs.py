"""Recipe section `inputs`: one entry per data column, by type, with its preprocessing and encoder."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, model_validator

from dlforge.recipe._base import Strict, _field
from dlforge.recipe.encoders import BACKBONE_IMAGE_PREPROCESSING, CNNEncoder, ImageEncoder, MiniLMEncoder, ResNetEncoder


# An image side past this is a mistake (a 100000 x 100000 resize asks for 120 GB per image, in float32).
MAX_IMAGE_SIDE = 8192


class NumberPreprocessing(Strict):
    normalization: Literal["standard", "minmax", "robust", "quantile", "none"] = _field(
        "standard", "Fitted on the training split only. standard: (x-mean)/std; minmax: to [0, 1]; robust: "
        "(x-median)/(IQR/1.349), then softly clipped to about ±3 (x/sqrt(1+(x/3)²), as RealMLP), for skewed "
        "columns with outliers; quantile: rank-based map to a standard normal (sklearn's QuantileTransformer, "
        "1,000 quantiles), for heavily skewed columns; none: raw.")
    missing: Literal["error", "mean", "median", "zero"] = _field(
        "mean", "What to do with NaN: fail naming the rows, or fill with the training statistic."
    )
    missing_indicator: bool = _field(True, "Add a 0/1 feature marking filled values (only when any were filled in training).")


class NumberEmbedding(Strict):
    """How one number becomes a vector (Gorishniy et al. 2022, "On Embeddings for Numerical Features")."""

    name: Literal["piecewise_linear", "periodic"] = _field(
        "piecewise_linear", "piecewise_linear: the value's position in each of `bins` quantile bins (fitted on "
        "train) → Linear → ReLU (PLE); periodic: sin/cos of `frequencies` learned frequencies → Linear → ReLU (PLR).")
    bins: int = _field(16, "piecewise_linear: quantile bins (fewer when the column has fewer distinct values).",
                       ge=2, le=256)
    frequencies: int = _field(16, "periodic: learned frequencies per column.", ge=1, le=256)
    sigma: float = _field(0.1, "periodic: initial frequencies ~ N(0, sigma).", gt=0)
    dim: int = _field(16, "Width of each column's embedding.", ge=1, le=512)


class NumberInput(Strict):
    name: str = _field(..., "Column name in the data.", min_length=1)
    type: Literal["number"] = "number"
    preprocessing: NumberPreprocessing = _field(NumberPreprocessing(), "Scaling and missing-value policy.")
    embedding: NumberEmbedding | None = _field(
        None, "Embed the scaled value (piecewise_linear or periodic) instead of passing it as one number; "
        "null passes it through.")
    tower: Literal["user", "item"] | None = _field(
        None, "Recommendation models only: a side feature of the user or of the item (two_tower feeds it to that "
        "tower, so an unseen user/item is still scored from it); null for other models.")


class CategoryPreprocessing(Strict):
    min_frequency: int = _field(1, "Values seen fewer times in training go to the unknown bucket.", ge=1)
    max_size: int | None = _field(None, "Keep at most this many most-frequent values.", ge=1)


class CategoryInput(Strict):
    name: str = _field(..., "Column name in the data.", min_length=1)
    type: Literal["category"] = "category"
    preprocessing: CategoryPreprocessing = _field(CategoryPreprocessing(), "Vocabulary options.")
    embedding_dim: int | None = _field(None, "Embedding width; null picks min(32, (vocabulary+1)//2).", ge=1)
    tower: Literal["user", "item"] | None = _field(
        None, "Recommendation models only: a side feature of the user or of the item (two_tower feeds it to that "
        "tower, so an unseen user/item is still scored from it); null for other models.")


class BinaryInput(Strict):
    name: str = _field(..., "Column name in the data.", min_length=1)
    type: Literal["binary"] = "binary"
    positive: str | None = _field(None, "The value that means 1; null infers it (true/yes/1, or the later of two sorted values).")
    tower: Literal["user", "item"] | None = _field(
        None, "Recommendation models only: a side feature of the user or of the item (two_tower feeds it to that "
        "tower, so an unseen user/item is still scored from it); null for other models.")


class ImagePreprocessing(Strict):
    scale: Literal["unit", "symmetric", "standard", "imagenet", "none"] = _field(
        "unit", "unit: x/255; symmetric: (x/255-0.5)/0.5; standard: per-channel train mean/std; imagenet: ImageNet "
        "mean/std; none: raw. Pretrained backbones set their own."
    )
    resize_shorter: int | None = _field(
        None, "With fit: crop, first scale the shorter side to this many pixels, then centre-crop `size` (the "
        "ImageNet protocol; pretrained backbones: 256 → 224). Smaller images are enlarged.", ge=4, le=MAX_IMAGE_SIDE)
    channels: Literal[1, 3] | None = _field(None, "Convert to this many channels; null keeps the data's.")
    size: tuple[Annotated[int, Field(ge=4, le=MAX_IMAGE_SIDE)], Annotated[int, Field(ge=4, le=MAX_IMAGE_SIDE)]] | None = _field(
        None, "Resize to (height, width); null keeps the data's.")
    fit: Literal["stretch", "crop", "pad"] = _field(
        "stretch", "How image files reach `size`: stretch (ignore aspect), crop (scale the short side, centre-crop), "
        "pad (scale the long side, pad with white).")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = _field(
        "bilinear", "Resampling filter of every resize to `size` (files in training, streaming, prediction and "
        "serving; arrays of another size): bilinear, bicubic (sharper; TensorFlow-trained backbones) or nearest "
        "(no new pixel values: masks, pixel art). Pretrained backbones set their own.")
    on_bad_file: Literal["error", "skip"] = _field(
        "error", "An image file that does not decode: fail naming it, or drop its row (the count is reported).")


class RandomResizedCrop(Strict):
    """torchvision's RandomResizedCrop ranges; each is (low, high)."""

    scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = _field(
        (0.08, 1.0), "Range of the crop's area as a fraction of the image (Inception-style).")
    ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = _field(
        (0.75, 4 / 3), "Range of the crop's aspect ratio (width / height).")

    @model_validator(mode="after")
    def _ranges_ascend(self) -> "RandomResizedCrop":
        wrong = [f"{name}: {list(pair)} is inverted; write [low, high], e.g. {sorted(pair)}"
                 for name, pair in (("scale", self.scale), ("ratio", self.ratio)) if pair[0] > pair[1]]
        if wrong:
            raise ValueError("\n".join(wrong))
        return self


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
    encoder: ImageEncoder = _field(CNNEncoder(), "How the image becomes a vector: cnn, resnet, mlp, scatter (ScatterNet + CNN), or a pretrained "
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
        # A before-validator sees the raw YAML: a name or preprocessing of the wrong type is left for the field
        # validation to report (a list as a dict key, or dict() of a list, would be a TypeError here).
        defaults = BACKBONE_IMAGE_PREPROCESSING.get(name) if isinstance(name, str) else None
        prep = data.get("preprocessing") or {}
        if defaults and isinstance(prep, (dict, BaseModel)):
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


class _TeacherEmbeddings(Strict):
    embeddings_from: Literal["none", "teacher"] = _field(
        "none", "teacher: a distilled student (`dlforge distill`) reads the teacher's own tokens (its fitted tokenizer, "
        "e.g. MiniLM's WordPiece) and starts from the teacher's token embeddings (dim must equal theirs: 384 for "
        "MiniLM). Only distillation can train such a student; none: a vocabulary and embeddings of its own.")
    freeze_embeddings: bool = _field(False, "Keep the token embeddings fixed during training (with embeddings_from: "
                                     "teacher: the teacher's vectors as they are).")


class TextEmbedEncoder(_TeacherEmbeddings):
    name: Literal["embed"] = "embed"
    dim: int = _field(64, "Token embedding width.", ge=1)
    pooling: Literal["mean", "max"] = _field("mean", "How the token embeddings of a text become one vector (padding ignored).")


class TextNgramEncoder(Strict):
    name: Literal["ngram"] = "ngram"
    dim: int = _field(32, "Embedding width of every token and n-gram.", ge=1)
    ngrams: int = _field(2, "Longest n-gram: 1 is a bag of words, 2 adds hashed bigrams (fastText's default), 3 trigrams.",
                         ge=1, le=4)
    buckets: int = _field(50_000, "Rows of the hashed n-gram table (collisions share a row). Parameters: (vocab_size + "
                          "buckets) x dim, 2.2M at the defaults with a 20k vocabulary.", ge=1, le=10_000_000)
    dropout: float = _field(0.2, "Dropout on the pooled vector.", ge=0, lt=1)
    members: int = _field(
        1, "K > 1: K bags in one pass, each with its own table (K x the parameters), their vectors stacked (B, K, dim) "
        "as the members of a TabM-style ensemble: the combiner's layers and the heads see each member, training "
        "averages the members' losses, prediction their probabilities (as combiner.ensemble). Needs combiner "
        "concat, with ensemble 1 or K.", ge=1, le=16)


class TextCNNEncoder(_TeacherEmbeddings):
    name: Literal["cnn"] = "cnn"
    dim: int = _field(64, "Token embedding width.", ge=1)
    filters: int = _field(64, "Filters per kernel size.", ge=1)
    kernel_sizes: list[Annotated[int, Field(ge=1, le=15)]] = _field([3, 4, 5], "One 1-D convolution per size; max over time (Kim 2014).", min_length=1)
    dropout: float = _field(0.0, "Dropout on the pooled vector, in training (Kim 2014 used 0.5).", ge=0, lt=1)
    layers: int = _field(1, "Convolution layers. 1: Kim's CNN. 2+: residual 3-wide convolutions over the first "
                         "layer's stacked feature maps (each layer widens a position's context by 2 tokens), then max "
                         "over time.", ge=1, le=8)


class _RNNOptions(Strict):
    name: Literal["lstm", "gru"] = _field("lstm", "Recurrent cell.")
    dim: int = _field(64, "Token embedding width.", ge=1)
    hidden: int = _field(64, "Hidden units per direction.", ge=1)
    layers: int = _field(1, "Stacked recurrent layers.", ge=1, le=8)
    bidirectional: bool = _field(True, "Read the text in both directions.")
    pooling: Literal["last", "mean", "max"] = _field("last", "Final hidden states (padding never read: packed sequences), or mean/max over steps.")
    dropout: float = _field(0.0, "Dropout between stacked layers.", ge=0, lt=1)


class TextRNNEncoder(_TeacherEmbeddings, _RNNOptions):  # the fields of _RNNOptions come first
    pass


class TransformerEncoderConfig(Strict):
    name: Literal["transformer"] = "transformer"
    dim: int = _field(64, "Model width (token embedding and attention).", ge=8)
    heads: int = _field(4, "Attention heads; must divide dim.", ge=1)
    layers: int = _field(2, "Encoder layers.", ge=1, le=24)
    ff_dim: int = _field(128, "Width of each layer's feed-forward block.", ge=1)
    dropout: float = _field(0.1, "Dropout in attention and feed-forward blocks.", ge=0, lt=1)
    pooling: Literal["cls", "mean"] = _field("cls", "The [CLS] position's vector, or the mean over non-padding positions.")


TextEncoder = Annotated[Union[TextEmbedEncoder, TextNgramEncoder, TextCNNEncoder, TextRNNEncoder, TransformerEncoderConfig, MiniLMEncoder],
                        Field(discriminator="name")]


class TextAugmentation(Strict):
    token_dropout: float = _field(0.0, "Replace this fraction of real tokens by [UNK] in each training batch.", ge=0, lt=1)


class TextInput(Strict):
    name: str = _field(..., "Column of text in the data.", min_length=1)
    type: Literal["text"] = "text"
    preprocessing: TextPreprocessing = _field(TextPreprocessing(), "Tokenizer options (fitted on the training split).")
    encoder: TextEncoder = _field(TextRNNEncoder(), "How the tokens become a vector: embed, ngram (bag of n-grams), cnn, lstm, gru, transformer, "
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


class SequenceRNNEncoder(_RNNOptions):
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


class AudioPreprocessing(Strict):
    sample_rate: int = _field(16000, "Clips are resampled to this rate (band-limited sinc interpolation) and mixed to mono.",
                              ge=1000, le=192_000)
    duration: float = _field(3.0, "Seconds per clip: longer clips are centre-cropped (counted), shorter ones padded with "
                                  "silence.", gt=0, le=600)
    pad: Literal["silence", "repeat"] = _field(
        "silence", "How a shorter clip reaches `duration`: silence after it, or the clip played again until it fills "
        "the duration (a short event then is not diluted by silence when the encoder averages over time).")
    max_seconds: float = _field(600.0, "A file longer than this is refused (training: an error naming it; serving: 413).",
                                gt=0, le=3600)
    features: Literal["log_mel", "mfcc"] = _field(
        "log_mel", "log_mel: log power through a mel filterbank (bands x frames); mfcc: its first `n_mfcc` DCT "
        "coefficients (cepstra). Both are standardised per band on the training split.")
    n_mels: int = _field(64, "Mel bands.", ge=8, le=512)
    n_mfcc: int = _field(20, "mfcc: coefficients kept.", ge=2, le=128)
    window_ms: float = _field(25.0, "Analysis window (Hann) in milliseconds.", gt=1, le=500)
    hop_ms: float = _field(10.0, "Step between frames in milliseconds.", gt=0.5, le=500)
    on_error: Literal["error", "skip"] = _field(
        "error", "A file that does not decode (corrupt, empty, 0 samples): fail naming it, or drop its row (counted).")


class SpecAugment(Strict):
    """Park et al. 2019: mask random bands and time spans of each training clip's features (tensor ops per batch)."""

    freq_masks: int = _field(2, "Frequency masks per clip.", ge=0, le=10)
    freq_width: int = _field(8, "Largest masked band count (uniform 0..width).", ge=0)
    time_masks: int = _field(2, "Time masks per clip.", ge=0, le=20)
    time_width: int = _field(20, "Largest masked frame count (uniform 0..width).", ge=0)


class AudioAugmentation(Strict):
    spec_augment: SpecAugment | None = _field(None, "Time and frequency masking of training batches; null off.")
    time_shift: float = _field(0.0, "Roll each training clip's frames by up to this fraction of the clip; 0 off.", ge=0, lt=1)


class AudioConv1DEncoder(SequenceCNNEncoder):
    name: Literal["cnn1d"] = "cnn1d"  # the bands are the channels: a 1-D FCN over frames


AudioEncoder = Annotated[Union[CNNEncoder, ResNetEncoder, AudioConv1DEncoder, SequenceRNNEncoder, TransformerEncoderConfig],
                         Field(discriminator="name")]


class AudioInput(Strict):
    name: str = _field(..., "Column of sound files (paths relative to the table, or a folder of <class>/*.wav), or "
                            "waveform arrays already at `preprocessing.sample_rate`.", min_length=1)
    type: Literal["audio"] = "audio"
    preprocessing: AudioPreprocessing = _field(AudioPreprocessing(), "Rate, duration and the spectral front end.")
    encoder: AudioEncoder = _field(
        CNNEncoder(channels=[32, 64, 128], padding="same", batch_norm=True, global_pool=True, dense=[]),
        "cnn or resnet: 2-D over the bands x frames image; cnn1d, gru, lstm or transformer: over frames, bands as channels.")
    augmentation: AudioAugmentation | None = _field(None, "Random changes to training batches (off at evaluation).")


class IdInput(Strict):
    name: str = _field(..., "Column of user or item identifiers (any strings or integers).", min_length=1)
    type: Literal["id"] = "id"
    role: Literal["user", "item"] = _field(..., "Whose identifier this is: a recommendation recipe has one of each.")
    min_frequency: int = _field(1, "Ids with fewer training interactions share the unknown bucket (index 0).", ge=1)
    duplicates: Literal["last", "first", "mean", "keep", "error"] = _field(
        "last", "role item only: what to do with repeated (user, item) pairs, counted and said before the split: "
        "keep the last row (by the leave-last-out time column, else file order), the first, the mean of the "
        "target, keep them all, or refuse the data.")


InputFeature = Annotated[Union[NumberInput, CategoryInput, BinaryInput, ImageInput, TextInput, SequenceInput, AudioInput,
                               IdInput],
                         Field(discriminator="type")]


