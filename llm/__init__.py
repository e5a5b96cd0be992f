"""The language model side of the node: a text backend (embedded SmolLM2 or any local Hugging
Face model), and the EchoGPT-style video-text model (frozen frame encoder, token compression,
linear projector, LoRA) with its training data and training loop.

Nothing here decides what a report may say: ``llm.grounding`` checks every generated text
against the measurements before anyone sees it.
"""
