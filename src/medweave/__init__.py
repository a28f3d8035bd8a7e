"""medweave: a local-first engine for multimodal medical AI.

The flow (see DESIGN.md): sources -> ingest -> store -> cohort -> encode -> fuse -> model.
"""

__version__ = "0.1.0"
