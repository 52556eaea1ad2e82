from pathlib import Path

from lossprobe.catalog import CATALOG
from lossprobe.readme_table import rewrite

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_code_table_is_generated_from_catalog():
    text = README.read_text()
    assert rewrite(text) == text, "run: python -m lossprobe.readme_table README.md"
    for code in CATALOG:
        assert f"`{code}`" in text


def test_readme_commands_exist():
    text = README.read_text()
    root = README.parent
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in text and (root / script).exists()
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text()
