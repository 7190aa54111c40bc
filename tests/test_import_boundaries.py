import subprocess
import sys


def _modules(package: str) -> list[str]:
    import importlib
    import pkgutil

    root = importlib.import_module(package)
    return [package] + sorted(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))


PIPELINE_MODULES = _modules("pipeline") + _modules("schemas")


def test_pipeline_and_schemas_import_no_beam():
    code = (
        "import importlib, sys\n"
        f"for name in {PIPELINE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    beam = [m for m in sys.modules if m == 'apache_beam' or m.startswith('apache_beam.')]\n"
        "    assert not beam, f'importing {name} loaded {beam[:3]}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_pipeline_alone_loads_no_beam():
    code = "import sys, pipeline; assert not any(m.startswith('apache_beam') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_beam_import_statement_in_pipeline_sources():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipeline"
    offenders = [str(p) for p in root.rglob("*.py") if "apache_beam" in p.read_text()]
    assert offenders == []
