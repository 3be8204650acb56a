"""Pretrained network bodies (architecture + ImageNet/sentence weights) that the backbone encoders wrap."""
