"""Search spaces (named discrete choices, archs) and the elastic modules supernets are built from."""
from .space import (
    Arch,
    ArchError,
    NoArchUnderCost,
    SearchSpace,
    canonical_arch,
    load_arch,
    prefix_arch,
    save_arch,
    strip_prefix,
)

__all__ = ["Arch", "ArchError", "NoArchUnderCost", "SearchSpace", "canonical_arch", "load_arch", "prefix_arch",
           "save_arch", "strip_prefix"]
