"""What a user reads before running anything: the README's promises, the licence, the dependency bounds."""
import re
import tomllib

import pytest
import torch

from medmamba.data import medmnist_subsets
from medmamba.evaluation.reports import PUBLISHED, published_table

from .helpers import REPO


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_file_matches_pyproject():
    declared = pyproject()["project"]["license"]["text"]
    text = (REPO / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text


def test_torch_lower_bound_has_what_the_code_uses():
    """The Triton backend registers torch.library.custom_op ops (torch 2.4); the bound must not admit less."""
    bound = next(d for d in pyproject()["project"]["dependencies"] if re.match(r"torch\b(?!vision)", d))
    major, minor = map(int, re.search(r">=\s*(\d+)\.(\d+)", bound).groups())
    assert (major, minor) >= (2, 4), bound
    assert hasattr(torch.library, "custom_op")
    source = (REPO / "src" / "medmamba" / "ops" / "scan_triton.py").read_text()
    assert "torch.library.custom_op" in source  # if this goes, the bound may be lowered again


def test_published_results_cover_every_medmnist_subset():
    assert set(PUBLISHED) == set(medmnist_subsets()) and len(PUBLISHED) == 12
    for name, rows in PUBLISHED.items():
        assert all(0 < acc < 1 and 0.5 < auc <= 1 for acc, auc in rows.values()), name
    table = published_table("dermamnist", {"medmnist": {"acc": 0.7, "auc": 0.9}})
    assert "| ResNet-18 (28), MedMNIST v2 | 0.735 | 0.917 |" in table


@pytest.mark.parametrize("needle", [
    "## Your own data", "root/train/<class>/*", "root/<class>/*", "split_seed", "path,label", "data.channels",
    "data.img_size", "data.mean", "order of the model's outputs"])
def test_readme_explains_own_data(needle):
    section = (REPO / "README.md").read_text().split("## Your own data", 1)
    assert len(section) == 2 and needle in "## Your own data" + section[1].split("\n## ", 1)[0]


def test_readme_says_how_to_install_a_cpu_only_torch():
    readme = (REPO / "README.md").read_text()
    head = readme.split("## ", 1)[0]
    assert "CPU-only" in head and "--index-url https://download.pytorch.org/whl/cpu" in head


def _internal_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at the top or inside functions (lazy imports count too:
    a circle through them is still a circle in the design)."""
    import ast
    src = REPO / "src"
    graph = {}
    for path in (src / "medmamba").rglob("*.py"):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
                deps |= {n for n in names if (src / n.replace(".", "/")).with_suffix(".py").is_file()} or {target}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[module] = {d for d in deps if d.startswith("medmamba") and d != module}
    return graph


def test_the_import_graph_has_no_circle():
    graph = _internal_imports()
    assert "medmamba.ops.selective_scan" in graph and graph["medmamba.ops.scan_cpu"]
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"
    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_layout_shows_the_architecture():
    """At most 12 modules at the top of the package; its folders (models, ops, data, artifacts, training,
    evaluation, deploy) import one another one way only."""
    top = [p.name for p in (REPO / "src" / "medmamba").glob("*.py")]
    assert len(top) <= 12, top
    parts = {}
    for module, deps in _internal_imports().items():
        if module == "medmamba":  # the package's face hands on names from every part
            continue
        part = module.split(".")[1]
        parts.setdefault(part, set()).update(d.split(".")[1] for d in deps if d.count(".") and d.split(".")[1] != part)
    folders = {p.name for p in (REPO / "src" / "medmamba").iterdir() if (p / "__init__.py").is_file()}
    assert {"models", "ops", "data", "artifacts", "training", "evaluation", "deploy"} <= folders
    for a in parts:
        for b in parts[a]:
            assert a not in parts.get(b, ()), f"{a} and {b} import each other"
