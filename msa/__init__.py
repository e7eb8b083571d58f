"""Shared library of the multimodal sentiment pipeline.

Every phase script is a thin CLI over this package: data reading and cleaning helpers
(:mod:`msa.data`), persisted splits (:mod:`msa.splits`), atomic file output (:mod:`msa.io`) and the
command-line conventions (:mod:`msa.cli`). Later issues add backbones, the feature cache, fusion heads,
losses, the trainer, metrics and plots here; no phase defines its own copy of them.
"""

__version__ = "0.1.0"
