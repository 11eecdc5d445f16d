"""prismrec: graph-based multimodal recommendation, implemented faithfully and compared honestly."""

from prismrec.threads import set_default_wait_policy

# Idle OpenMP threads sleep instead of spinning (prismrec.threads explains why). Must happen
# before torch is first imported; an OMP_WAIT_POLICY the user set is kept.
set_default_wait_policy()

__version__ = "0.1.0"
