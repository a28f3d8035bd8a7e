"""medweave: a local-first engine for multimodal medical AI.

The flow (see DESIGN.md): sources -> ingest -> store -> cohort -> encode -> fuse -> model.
"""

import os as _os

__version__ = "0.1.0"

# Arrow's default allocator (mimalloc) keeps the pages it freed: a process's memory then follows the
# largest Arrow data it ever held (60 MB more after loading a cohort of 30,000 phantom patients).
# medweave asks for the system allocator unless the user chose one; it applies when pyarrow is first
# imported after this (a process that imported pyarrow before medweave keeps its pool).
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
