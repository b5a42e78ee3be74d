"""The pretraining data layer: prepare raw corpora into packed token shards, and read them back as a mixture.

Preparation (``prepare.py``, ``readers.py``, ``tokenize.py``, ``shards.py``) and the training-side datasets
(``mixture.py``). Exports are imported lazily, so that the tokenizer worker processes never import torch.
See docs/data.md.
"""

from __future__ import annotations

from ..utils import lazy_exports

_EXPORTS = {
    "SourceWeight": "mixture",
    "parse_mixture": "mixture",
    "check_mixture": "mixture",
    "MixtureDataset": "mixture",
    "SequentialDataset": "mixture",
    "validation_dataset": "mixture",
    "DistributedStepSampler": "mixture",
    "PrepareConfig": "prepare",
    "prepare_sources": "prepare",
    "load_config": "prepare",
    "prepare_data": "prepare",
    "prepare_from_config": "prepare",
    "TokenStream": "shards",
    "read_manifest": "shards",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
