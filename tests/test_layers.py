"""Imports run one way (BUILD.md, "Layout"): every `import` in toymech/ and
experiments/, parsed with `ast` (function-level imports included), must point
at the same or a lower layer; no study imports another study; the interventions
never import the model; below `tasks/`, nothing imports the package root
(`import toymech` runs `toymech/__init__.py`, which loads the analysis layer)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Bottom to top. A module may import its own layer and the layers before it.
LAYERS = [
    ["toymech.config", "toymech.params", "toymech.projections", "toymech.compilation_cache"],
    ["toymech.sites"],
    ["toymech.model", "toymech.interventions", "toymech.cache", "toymech.generation"],
    ["toymech.weights", "toymech.interop", "toymech.checkpoint", "toymech.train",
     "toymech.experiment", "toymech.report", "toymech.plots"],
    ["toymech.analysis"],
    ["toymech.tasks"],
    ["toymech.studies"],
    ["experiments"],
]
ROOT_PACKAGE_RANK = 4.5  # toymech/__init__.py: imports up to the analysis layer
# Same layer, one way only: model -> interventions, generation -> model.
FORBIDDEN = {("toymech.interventions", "toymech.model"), ("toymech.model", "toymech.generation"),
             ("toymech.interventions", "toymech.generation")}
# The one allowed upward edge: ActivationCache (built by the model) offers TransformerLens's
# cache methods as thin calls into analysis.attribution, imported inside those methods only.
CALL_TIME_UP = {("toymech.cache", "toymech.analysis.attribution")}
STUDY_ENTRIES = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))  # grokking, reverse, ...
SHARED_STUDY_MODULES = {"toymech.studies", "toymech.studies.common"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    files = list((ROOT / "toymech").rglob("*.py")) + list((ROOT / "experiments").glob("*.py"))
    return {_module_name(p): p for p in files}


MODULES = _modules()


def _rank(module: str) -> float:
    if module == "toymech":
        return ROOT_PACKAGE_RANK
    for rank, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py "
                         "(and to BUILD.md's layout)")


def _imports(module: str, path: pathlib.Path):
    """(line, imported toymech/experiments module) for every import statement."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else base


def _study_of(module: str) -> str | None:
    name = module.removeprefix("toymech.studies.")
    matches = [s for s in STUDY_ENTRIES if name == s or name.startswith(s + "_")]
    return max(matches, key=len) if matches else None


def _violations(modules):
    for module, path in sorted(modules.items()):
        for line, target in sorted(set(_imports(module, path))):
            if not (target == "toymech" or target.startswith(("toymech.", "experiments."))):
                continue
            where = f"{path.name}:{line}: {module} imports {target}"
            if target == "toymech" and _rank(module) <= ROOT_PACKAGE_RANK and module != "toymech":
                yield f"{where} (the package root loads the analysis layer)"
            elif _rank(target) > _rank(module) and (module, target) not in CALL_TIME_UP:
                yield f"{where} (an upward edge)"
            elif (module, target) in FORBIDDEN:
                yield f"{where} (forbidden within the layer)"
            elif (module.startswith("toymech.studies.") and target.startswith("toymech.studies.")
                  and target not in SHARED_STUDY_MODULES and _study_of(module) != _study_of(target)):
                yield f"{where} (a study imports another study; share code through toymech.studies.common)"


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _rank(module)


def test_imports_run_one_way():
    bad = list(_violations(MODULES))
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, target, ok", [
    ("toymech.analysis.probes", "toymech.tasks.grokking", False),
    ("toymech.tasks.grokking", "toymech.analysis.fourier", True),
    ("toymech.interventions", "toymech.model", False),
    ("toymech.model", "toymech.interventions", True),
    ("toymech.studies.reverse", "toymech.studies.grokking", False),
    ("toymech.studies.grokking", "toymech.studies.grokking_modular", True),
    ("toymech.studies.sum_digits", "toymech.studies.sum_digits_analysis", True),
])
def test_the_checker_tells_up_from_down(module, target, ok, tmp_path):
    """The rule itself, on planted edges: a one-line module importing `target`."""
    path = tmp_path / "planted.py"
    path.write_text(f"import {target}\n")
    assert (not list(_violations({module: path}))) == ok


def test_help_shows_the_api_first():
    """help(toymech): the curated surface, not the Flax Module's inherited methods."""
    import pydoc

    import toymech

    text = pydoc.render_doc(toymech, renderer=pydoc.plaintext)
    assert len(text.splitlines()) < 400 and "flax.linen" not in text
    assert text.index("The core:") < text.index("CLASSES") < text.index("FUNCTIONS") < text.index("    init_params(cfg")
    assert all(hasattr(toymech, name) for name in toymech.__all__)
