"""Network architectures. Importing this package registers them in ``ARCH_REGISTRY``."""

from .drsformer import PAPER_VARIANTS, DRSformer, drsformer, drsformer_no_mefc

__all__ = ["DRSformer", "PAPER_VARIANTS", "drsformer", "drsformer_no_mefc"]
