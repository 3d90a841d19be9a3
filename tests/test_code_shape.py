"""The code keeps its shape: no function in src/ longer than 60 lines, no file longer than 400 (CONTRIBUTING)."""
import ast

from conftest import REPO


def test_functions_and_files_stay_small():
    too_long = []
    for path in sorted((REPO / "src" / "leankd").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}() "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_long, "split these: " + "; ".join(too_long)
