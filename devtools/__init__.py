"""Development tools: a local Triton Inference Server for development, tests and CI."""
