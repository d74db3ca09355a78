"""Searched detection heads. ``fad``: FAD's DARTS cells in the box and cls towers of FCOS / RetinaNet."""
from .fad import (ALPHA_COLUMNS, OP_NAMES, PUBLISHED_GENOTYPES, FADFCOSHead, FADRetinaNetHead, FADTowers, Genotype,
                  GenotypeError, arch_parameters, fad_towers, derive_genotype, format_genotype, parse_genotype,
                  read_genotypes, write_genotypes)

__all__ = ["ALPHA_COLUMNS", "OP_NAMES", "PUBLISHED_GENOTYPES", "FADFCOSHead", "FADRetinaNetHead", "FADTowers",
           "Genotype", "GenotypeError", "arch_parameters", "fad_towers", "derive_genotype", "format_genotype",
           "parse_genotype", "read_genotypes", "write_genotypes"]
