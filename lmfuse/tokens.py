"""The special token ids every part of lmfuse agrees on: a leaf that anything may import.

The tokenizer (`lmfuse.data.tokenizer`) builds its SentencePiece models with exactly these
ids; models, decoders and losses read them from here, so none of them depends on the data.
"""

PAD_ID, EOS_ID, BOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
