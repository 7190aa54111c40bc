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


def test_no_circle_of_imports_in_pipeline():
    """Each module's job is one-way: embedding -> ingest -> embedding and text_format ->
    embedding -> text_format once went round (issue 36). Imports inside functions count too."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "pipeline").rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                graph[name] |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                                for a in node.names}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
        graph[name] -= {name, "pipeline"}

    def circle_from(start):
        path, seen = [start], {start}

        def visit(node):
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    found = visit(nxt)
                    if found:
                        return found
                    path.pop()
            return None
        return visit(start)

    circles = [c for c in map(circle_from, sorted(graph)) if c]
    assert not circles, " ; ".join(" -> ".join(c) for c in circles[:5])
