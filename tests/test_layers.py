"""The package's layers, checked from its import statements (ast, nothing imported): a module never
imports one of a higher layer, and a stage never imports another stage. See docs/code_map.md."""
from __future__ import annotations

import ast
from pathlib import Path

import nasdet

ROOT = Path(nasdet.__file__).parent

# lowest first; a module belongs to the longest prefix listed
LAYERS = [
    ("nasdet", "nasdet.errors", "nasdet.files", "nasdet.threads", "nasdet.progress", "nasdet.workdir",
     "nasdet.user_data"),
    ("nasdet.space",),
    ("nasdet.data", "nasdet.metrics"),
    ("nasdet.models",),  # each detector family owns its model config (models/config.py, models/families/)
    ("nasdet.config", "nasdet.data.build"),  # the run's config is the union of the families' sections
    ("nasdet.train",),
    ("nasdet.export", "nasdet.quantize"),
    ("nasdet.search",),
    ("nasdet.stages", "nasdet.stages.common"),
    ("nasdet.stages.baseline", "nasdet.stages.pretrain", "nasdet.stages.search", "nasdet.stages.tune",
     "nasdet.stages.export", "nasdet.stages.report", "nasdet.stages.diagnose", "nasdet.stages.classify"),
    ("nasdet.pipeline",),
    ("nasdet.cli", "nasdet.__main__"),  # entry points
]
LAYER_OF = {prefix: i for i, group in enumerate(LAYERS) for prefix in group}
STAGES = set(LAYERS[9])  # the stage modules


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYER_OF:
            return LAYER_OF[".".join(parts[:n])]
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every nasdet import in ``path``, top-level or inside a function."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "nasdet"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "nasdet":
                continue
            for a in node.names:  # `from . import dist`: the module imported is nasdet.train.dist
                sub = f"{target}.{a.name}"
                is_module = (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT.parent / Path(*sub.split("."))).is_dir()
                out.append((node.lineno, sub if is_module else target))
    return out


def test_every_import_goes_down_and_no_stage_imports_another():
    problems = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 40
    for path in files:
        me = module_name(path)
        for line, target in imported_modules(path):
            if layer(target) > layer(me):
                problems.append(f"{path.relative_to(ROOT.parent)}:{line}: {me} (layer {layer(me)}) imports "
                                f"{target} (layer {layer(target)}), a higher layer")
            stage_me = next((s for s in STAGES if me == s or me.startswith(s + ".")), None)
            stage_target = next((s for s in STAGES if target == s or target.startswith(s + ".")), None)
            if stage_me and stage_target and stage_me != stage_target:
                problems.append(f"{path.relative_to(ROOT.parent)}:{line}: stage {stage_me} imports stage {stage_target}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk resolves relative imports, so an upward one cannot hide behind dots."""
    fake = ROOT / "space" / "space.py"
    found = dict((t, n) for n, t in imported_modules(fake))
    assert "nasdet.errors" in found
    assert layer("nasdet.stages.search") > layer("nasdet.train.loop") > layer("nasdet.space.space")
