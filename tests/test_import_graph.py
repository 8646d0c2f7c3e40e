"""Imports inside icd_tune run one way: no module reaches itself through its imports.

The graph is read from the source (AST), so imports inside functions and under
``TYPE_CHECKING`` count as much as those at the top of a file: each is a
dependency a reader has to hold in mind, and a lazy one only hides a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "icd_tune"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_names(path: Path, name: str) -> set[str]:
    """Every icd_tune module the file imports, wherever in the file the import is."""
    here = package_of(name, path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # "from pkg import mod" imports the module pkg.mod when there is one
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {n for n in found if n == "icd_tune" or n.startswith("icd_tune.")}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        edges = {n for n in imported_names(path, name) if n in paths and n != name}
        # A package's __init__ runs before its modules, but is not counted as their dependency:
        # an __init__ that gathers its own modules would otherwise always read as a circle.
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reads_lazy_and_type_checking_imports(tmp_path):
    pkg = tmp_path / "icd_tune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = pkg / "a.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
                      "def f():\n    from . import c\n    import icd_tune.d\n")
    assert imported_names(source, "icd_tune.a") >= {"icd_tune.b", "icd_tune.c", "icd_tune.d"}


def test_the_cycle_finder_names_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_planning_a_warm_started_study_loads_no_ray(tiny_study, tmp_path):
    """Planning (the study file, its checks, the plan) stays free of Ray, warm start included."""
    import optuna
    from optuna.distributions import FloatDistribution

    db = tmp_path / "optuna.db"
    earlier = optuna.create_study(study_name="earlier", storage=f"sqlite:///{db}", direction="maximize")
    space = {"params/loss.invariance_weight": FloatDistribution(0.0, 2.0),
             "params/optim.lr": FloatDistribution(0.001, 0.2, log=True)}
    earlier.add_trial(optuna.trial.create_trial(
        params={"params/loss.invariance_weight": 0.5, "params/optim.lr": 0.01}, distributions=space, value=0.5))
    path = tiny_study("warm", f"""
        mode: search
        search:
          space:
            loss.invariance_weight: {{type: uniform, low: 0.0, high: 2.0}}
            optim.lr: {{type: loguniform, low: 0.001, high: 0.2}}
          num_samples: 2
          warm_start: {db}
        seeds: [0]
        """)
    code = ("import sys\n"
            "from icd_tune.platform.stages.plan import RunOptions, resolve_plan\n"
            "from icd_tune.platform.study.definition import load_study\n"
            f"plan = resolve_plan(load_study({str(path)!r}), RunOptions(results_dir={str(tmp_path / 'results')!r}))\n"
            "assert plan.warm_start is not None and len(plan.warm_start.trials) == 1, plan.warm_start\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_optuna_distributions_match_what_ray_makes_of_the_tune_domains(tiny_study):
    """The Ray-free space a warm start checks against is the one OptunaSearch gives its trials."""
    from ray.tune.search.optuna import OptunaSearch

    from icd_tune.platform.raytune.space import optuna_distributions, search_domains
    from icd_tune.platform.study.definition import load_study

    study = load_study(tiny_study("space", """
        mode: search
        search:
          space:
            loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
            optim.lr: {type: loguniform, low: 0.001, high: 0.2}
            optim.batch_size: {type: int, low: 16, high: 64}
            loss.feat_dim: {type: int, low: 8, high: 128, log: true}
            loss.temperature: {type: choice, values: [0.05, 0.1, 0.2]}
          num_samples: 2
        seeds: [0]
        """))
    ray_made = OptunaSearch.convert_search_space({"params": search_domains(study)})
    assert len(ray_made) == 5
    assert optuna_distributions(study) == ray_made
