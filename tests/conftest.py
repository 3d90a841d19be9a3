"""Shared fixtures. Real data comes from LEANKD_DATA_DIR (default: ../shared/data next to the repo)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    # absolute once, here: tests hand it to child processes that run from other working directories
    path = Path(os.environ.get("LEANKD_DATA_DIR", REPO.parent / "shared" / "data")).expanduser().resolve()
    if not (path / "cifar10" / "cifar10_train.npz").is_file():
        pytest.fail(f"real data not found under {path}; set LEANKD_DATA_DIR to the data directory")
    return path
