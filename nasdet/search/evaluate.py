"""Moved to ``nasdet.train.bn`` (BN recalibration is used by supernet training as well as search)."""
from ..train.bn import bn_modules, preserved_bn_state, recalibrate_bn  # noqa: F401
