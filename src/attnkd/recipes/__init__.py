"""The recipes shipped inside the package, so any install (not only a source checkout) can list
and run them: ``attnkd ls recipes``, ``attnkd distill minilm-sentence``.

The YAML files here are byte-for-byte copies of the repository's ``recipes/`` folder (which the
README's commands use); ``tests/test_recipes.py`` fails when the two differ. After adding or
editing a recipe there: ``cp recipes/*.yaml src/attnkd/recipes/``.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def recipe_files() -> list[Path]:
    """The packaged recipe files, sorted by name."""
    return sorted(FOLDER.glob("*.yaml"))


def find_recipe(name: str) -> Path | None:
    """The packaged recipe called ``name`` ('minilm-sentence' or 'minilm-sentence.yaml'), or
    None when ``name`` is a path or no packaged recipe has that name."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = FOLDER / f"{stem}.yaml"
    return path if path.is_file() else None


def description(path: Path) -> str:
    """The recipe's first comment line (its one-line description), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            return text if len(text) <= 90 else text[:87] + "..."
        if line.strip():
            break
    return ""


__all__ = ["FOLDER", "description", "find_recipe", "recipe_files"]
