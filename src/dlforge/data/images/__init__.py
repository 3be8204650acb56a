"""Images: decoding (with the pixel-limit guard), image-file columns, folder trees, and the streaming path."""
