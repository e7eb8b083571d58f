"""Imported once by the fork server that the training workers are forked from (:data:`msa.workers.PRELOAD`):
the modules every worker needs before its first job, so that no worker imports them itself.

torch's optimisers import ``torch._dynamo`` on their first use (~1.7 s); matplotlib draws the runs' figures
(Agg, as :func:`msa.plots.pyplot` sets it). Nothing here starts a thread or runs a tensor operation, so forking the
server is safe.
"""

import matplotlib

matplotlib.use("Agg")

import accelerate  # noqa: E402,F401
import matplotlib.pyplot  # noqa: E402,F401
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401

import msa.experiment  # noqa: E402,F401
import msa.fusion_search  # noqa: E402,F401
import msa.losses  # noqa: E402,F401
import msa.metrics  # noqa: E402,F401
import msa.trainer  # noqa: E402,F401
