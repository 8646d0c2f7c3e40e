"""The two layers: the method package never reaches into the platform or its drivers.

Scans every import statement (module level and inside functions) of every file in
``icd_tune/method``, so a lazy import cannot slip past, and checks in a fresh
interpreter that importing the method layer loads none of Ray, Optuna or MLflow
(the GPU check runs the method layer on machines that have none of them).
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "icd_tune"
FORBIDDEN_TOP = {"ray", "optuna", "mlflow"}
SIZE_LIMIT_LINES = 400
SIZE_LIMIT_FUNCTION = 80


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted module) for every import in the file, relative ones resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(PACKAGE.parent).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def test_method_layer_imports_only_downward():
    method_files = sorted((PACKAGE / "method").rglob("*.py"))
    assert len(method_files) >= 10
    violations = []
    for path in method_files:
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN_TOP or module.startswith("icd_tune.platform"):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not violations, "method layer must not import the platform or its drivers:\n" + "\n".join(violations)


def test_import_scanner_sees_lazy_and_relative_imports(tmp_path):
    # The rule above is only as good as the scanner: a lazy relative import of the
    # platform from inside a function must be reported.
    probe = PACKAGE / "method" / "_probe_for_test.py"
    probe.write_text("def f():\n    from ..platform import runner\n    import ray.tune\n")
    try:
        modules = [m for _, m in _imports(probe)]
    finally:
        probe.unlink()
    assert "icd_tune.platform.runner" in modules and "ray.tune" in modules


def test_importing_method_layer_loads_no_ray_optuna_mlflow():
    code = (
        "import sys, icd_tune, icd_tune.method.train, icd_tune.method.teachers, "
        "icd_tune.method.teacher_outputs, icd_tune.method.distillers;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'optuna', 'mlflow'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout



def test_files_and_functions_stay_legible():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > SIZE_LIMIT_LINES:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > SIZE_LIMIT_FUNCTION:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "over the size limits:\n" + "\n".join(too_long)
