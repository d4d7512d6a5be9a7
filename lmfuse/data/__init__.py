"""Data layer: corpora (TFDS builders and sources), SentencePiece, Grain pipelines."""
