"""Text models of the legacy Module 6 API: corpus, tokenizer, bigram, word LSTM, pretrained embeddings.

The text service and `training/train_rnn.py` both import this package; nothing here loads a model
or reads a file at import time.
"""
