"""The serving core: embeddings, caching, batching, encoders and the decoder. No HTTP here."""
