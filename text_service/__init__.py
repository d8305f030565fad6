"""Legacy Module 6 text API: bigram, LSTM and embeddings, in its own process."""
