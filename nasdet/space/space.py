"""``SearchSpace``: named, ordered, discrete choices, and archs (one value per choice) checked against them.

A space maps names to tuples of choices, ``{"stage1.block0.kernel": (3, 5, 7), ...}``; within a
name the first choice is the smallest and the last the largest. An arch is a plain
``dict[str, int | str]``. ``space_id`` (a hash of names and choices) is stored with every arch on
disk and in every checkpoint, so an arch is never read against a space it was not drawn from.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ArchError, NoArchUnderCost
from ..files import write_text_atomic

Arch = dict[str, Any]
_SHOWN = 12  # names listed in an error before "..."


_DEPTH_NAME = re.compile(r"^(.*\bstage\d+)\.depth$")
_BLOCK_NAME = re.compile(r"^(.*\bstage\d+)\.block(\d+)\.")


def canonical_arch(arch: Mapping[str, Any]) -> Arch:
    """``arch`` with the choices of skipped blocks set to None: in the elastic spaces (OFA, mbv2_elastic)
    a stage runs its first ``stage{s}.depth`` blocks, so archs that differ only in the kernel / expand of
    ``stage{s}.block{j}`` with ``j >= depth`` are the same network. Spaces without depth choices are
    returned unchanged. Used for keys (caches, duplicate checks), never to build a network."""
    depths = {m.group(1): v for n, v in arch.items() if (m := _DEPTH_NAME.match(n))}
    if not depths:
        return dict(arch)
    out = {}
    for name, value in arch.items():
        m = _BLOCK_NAME.match(name)
        out[name] = None if m and m.group(1) in depths and int(m.group(2)) >= depths[m.group(1)] else value
    return out


def _short(names) -> str:
    names = list(names)
    more = f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(repr(n) for n in names[:_SHOWN]) + more


class SearchSpace:
    """Immutable named choices. ``choices[name]`` is a tuple ordered smallest first.

    ``default`` (optional): the arch ``default()`` returns; without it, the first (smallest) choices.
    It is not part of ``space_id``. ``unit`` (optional): what the subnets compute when it is not the default
    (e.g. ``model.backbone.layout detnas``: another ShuffleNetV2 unit with the same weights' names), part of
    ``space_id`` only when given, so that weights trained under one unit are refused under another while the
    default spaces keep their ids.
    """

    def __init__(self, choices: Mapping[str, tuple | list], default: Mapping[str, Any] | None = None,
                 unit: str | None = None):
        self._choices: dict[str, tuple] = {}
        self.unit = unit
        for name, values in choices.items():
            if not isinstance(name, str) or not name:
                raise ArchError(f"choice names must be non-empty strings, got {name!r}")
            values = tuple(values)
            if not values:
                raise ArchError(f"choice {name!r} has no values")
            if len(set(values)) != len(values):
                raise ArchError(f"choice {name!r} repeats a value: {values}")
            for v in values:
                if not isinstance(v, (int, float, str, bool)):
                    raise ArchError(f"choice {name!r}: values must be int, float, str or bool (JSON), got {v!r}")
            self._choices[name] = values
        payload = json.dumps(sorted(self._choices.items()), separators=(",", ":"), sort_keys=True)
        if unit is not None:
            payload += f"|unit={unit}"
        self._space_id = hashlib.sha256(payload.encode()).hexdigest()[:16]
        self._default = self.validate(default) if default is not None else self.smallest()

    # ------------------------------------------------------------------------------------- basics
    @property
    def choices(self) -> dict[str, tuple]:
        return dict(self._choices)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._choices)

    @property
    def space_id(self) -> str:
        """16 hex chars of sha256 over the sorted (name, choices) pairs: stable across runs and machines."""
        return self._space_id

    def __getitem__(self, name: str) -> tuple:
        return self._choices[name]

    def __contains__(self, name: object) -> bool:
        return name in self._choices

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices)

    def __len__(self) -> int:
        return len(self._choices)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and other._choices == self._choices and other.unit == self.unit

    def __hash__(self) -> int:
        return hash(self._space_id)

    def __repr__(self) -> str:
        return f"SearchSpace({len(self)} choices, {self.num_archs():.3g} archs, id={self.space_id})"

    def num_archs(self) -> int:
        """Product of the choice counts (archs that differ only in skipped blocks count separately)."""
        return math.prod(len(v) for v in self._choices.values())

    # ----------------------------------------------------------------------------------- validate
    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """Check ``arch`` and return it as a new dict in this space's name order (values as the space spells them).

        Raises ``ArchError`` naming every unknown name, missing name and bad value (with its allowed values).
        """
        if not isinstance(arch, Mapping):
            raise ArchError(f"an arch is a mapping name -> value, got {type(arch).__name__}")
        problems = []
        unknown = [n for n in arch if n not in self._choices]
        if unknown:
            problems.append(f"unknown choice name(s) {_short(unknown)} (known: {_short(self._choices)})")
        missing = [n for n in self._choices if n not in arch]
        if missing:
            problems.append(f"missing choice name(s) {_short(missing)}")
        out: Arch = {}
        for name, values in self._choices.items():
            if name not in arch:
                continue
            v = arch[name]
            match = [c for c in values if c == v and type(c) is type(v)] or [
                c for c in values if c == v and not isinstance(v, bool) and not isinstance(c, bool)]
            if not match:
                problems.append(f"choice {name!r} = {v!r} is not allowed; allowed values: {list(values)}")
            else:
                out[name] = match[0]
        if problems:
            raise ArchError(f"arch does not fit search space {self.space_id}: " + "; ".join(problems))
        return out

    def is_valid(self, arch: Mapping[str, Any]) -> bool:
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    # ------------------------------------------------------------------------- fixed archs
    def smallest(self) -> Arch:
        return {n: v[0] for n, v in self._choices.items()}

    def largest(self) -> Arch:
        return {n: v[-1] for n, v in self._choices.items()}

    def default(self) -> Arch:
        return dict(self._default)

    # ------------------------------------------------------------------------------ sampling
    def sample(self, rng: random.Random) -> Arch:
        """Each choice uniform and independent."""
        return {n: rng.choice(v) for n, v in self._choices.items()}

    def sample_under(self, rng: random.Random, cost_fn: Callable[[Arch], float], max_cost: float,
                     max_tries: int = 1000) -> Arch:
        """A uniform sample with ``cost_fn(arch) <= max_cost`` by rejection."""
        lowest = math.inf
        for _ in range(max_tries):
            arch = self.sample(rng)
            cost = cost_fn(arch)
            if cost <= max_cost:
                return arch
            lowest = min(lowest, cost)
        smallest_cost = cost_fn(self.smallest())
        raise NoArchUnderCost(
            f"no arch with cost <= {max_cost} in {max_tries} uniform samples (lowest seen {lowest}); "
            f"the smallest arch costs {smallest_cost}"
            + (" (the least value of each choice; not always the cheapest arch)" if smallest_cost > max_cost else
               ", raise max_tries or the limit"))

    def mutate(self, arch: Mapping[str, Any], rng: random.Random, prob: float) -> Arch:
        """Each choice with probability ``prob`` moves to a different value (uniform among the others)."""
        out = self.validate(arch)
        for n, values in self._choices.items():
            if len(values) > 1 and rng.random() < prob:
                out[n] = rng.choice([v for v in values if v != out[n]])
        return out

    def crossover(self, a: Mapping[str, Any], b: Mapping[str, Any], rng: random.Random) -> Arch:
        """Each choice taken from ``a`` or ``b`` with probability 1/2 (uniform crossover)."""
        a, b = self.validate(a), self.validate(b)
        return {n: (a[n] if rng.random() < 0.5 else b[n]) for n in self._choices}

    # --------------------------------------------------------------------------- new spaces
    def restrict(self, allowed: Mapping[str, Any]) -> "SearchSpace":
        """A space with ``allowed[name]`` (a non-empty subset, kept in this space's order) for the names given.

        Progressive shrinking opens kernel, depth and expand choices stage by stage this way.
        """
        unknown = [n for n in allowed if n not in self._choices]
        if unknown:
            raise ArchError(f"restrict: unknown choice name(s) {_short(unknown)} (known: {_short(self._choices)})")
        new = dict(self._choices)
        for name, subset in allowed.items():
            subset = tuple(subset) if isinstance(subset, (list, tuple, set, frozenset)) else (subset,)
            bad = [v for v in subset if v not in self._choices[name]]
            if bad or not subset:
                raise ArchError(f"restrict: choice {name!r} cannot be restricted to {list(subset)}; "
                                f"allowed values: {list(self._choices[name])}")
            new[name] = tuple(v for v in self._choices[name] if v in subset)
        default = {n: (d if d in new[n] else new[n][-1 if d == self._choices[n][-1] else 0])
                   for n, d in self._default.items()}
        return SearchSpace(new, default, self.unit)

    def with_unit(self, unit: str | None) -> "SearchSpace":
        """The same choices computed by another ``unit`` (see the class doc)."""
        return SearchSpace(self._choices, self._default, unit)

    def prefixed(self, prefix: str) -> "SearchSpace":
        """Every name as ``prefix.name`` (how a detector composes its parts' spaces)."""
        return SearchSpace({_join(prefix, n): v for n, v in self._choices.items()}, prefix_arch(self._default, prefix),
                           self.unit)

    @staticmethod
    def merge(*spaces: "SearchSpace") -> "SearchSpace":
        """One space with all names of ``spaces`` (in order); a name in two spaces is an error. Its unit: the
        parts' units, joined."""
        choices: dict[str, tuple] = {}
        default: Arch = {}
        for space in spaces:
            clash = [n for n in space.names if n in choices]
            if clash:
                raise ArchError(f"merge: choice name(s) {_short(clash)} appear in more than one space; prefix them")
            choices.update(space._choices)
            default.update(space._default)
        units = [s.unit for s in spaces if s.unit is not None]
        return SearchSpace(choices, default, "; ".join(units) if units else None)

    def to_dict(self) -> dict:
        unit = {"unit": self.unit} if self.unit is not None else {}
        return {"space_id": self.space_id, **unit, "choices": {n: list(v) for n, v in self._choices.items()}}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}{name}" if not prefix or prefix.endswith(".") else f"{prefix}.{name}"


def prefix_arch(arch: Mapping[str, Any], prefix: str) -> Arch:
    """``{name: v}`` -> ``{prefix.name: v}``."""
    return {_join(prefix, n): v for n, v in arch.items()}


def strip_prefix(arch: Mapping[str, Any], prefix: str) -> Arch:
    """The part of a composed arch under ``prefix``, names without it: a part's own arch."""
    p = _join(prefix, "")
    return {n[len(p):]: v for n, v in arch.items() if n.startswith(p)}


# ------------------------------------------------------------------------------------------- JSON
def save_arch(path: str | Path, arch: Mapping[str, Any], space: SearchSpace,
              costs: Mapping[str, float] | None = None) -> None:
    """Write ``{"space_id": ..., "arch": {...}}`` after validating ``arch`` against ``space``; ``costs``
    (what the search predicted for it) travel along when given."""
    arch = space.validate(arch)
    record = {"space_id": space.space_id, "arch": arch}
    if costs is not None:
        record["costs"] = {k: float(v) for k, v in costs.items()}
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def load_arch(path: str | Path, space: SearchSpace) -> Arch:
    """Read an arch written by ``save_arch``; refuses one saved for another space, then validates it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArchError(f"{path} is not JSON: {e}") from e
    if not isinstance(data, dict) or "arch" not in data or "space_id" not in data:
        raise ArchError(f"{path} is not an arch file (expected keys 'space_id' and 'arch')")
    if data["space_id"] != space.space_id:
        raise ArchError(f"{path} holds an arch of search space {data['space_id']}, not of this space "
                        f"{space.space_id} (different names or choices)")
    try:
        return space.validate(data["arch"])
    except ArchError as e:  # a hand-edited file: say which (best_arch.json, tune.arch, tune/arch.json ...)
        raise ArchError(f"{path}: {e}") from None
