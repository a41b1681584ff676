"""A built wheel holds every package and the recipes, and the main job finds its recipes when
installed from it (outside the source tree)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["trainkit", "stage1_tokenizer", "stage2_prior", "pipelines", "evalkit", "commands"]


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel --no-deps --no-build-isolation` of a clean copy of the project (no stale build/)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ["pyproject.toml", "README.md", "configs", *PACKAGES]:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    wheel, = (tmp_path / "dist").glob("*.whl")
    return wheel


def test_the_wheel_holds_every_module_and_recipe_and_the_main_job_finds_them(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            assert path.relative_to(REPO).as_posix() in names, f"{path.relative_to(REPO)} is not in the wheel"
    for recipe in (REPO / "configs").rglob("*.yaml"):
        assert "imagegen_recipes/" + recipe.relative_to(REPO / "configs").as_posix() in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import commands.main_job as job\n"
             "for path in (job.DEFAULT_TOKENIZER_CONFIG, job.DEFAULT_PRIOR_CONFIG):\n"
             "    print(path, path.is_file())\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")[:2]
    for line, name in zip(lines, ("tokenizer/fashion_mnist_vq.yaml", "prior/fashion_mnist.yaml")):
        path, exists = line.rsplit(" ", 1)
        assert exists == "True" and path.startswith(str(target)) and path.endswith("imagegen_recipes/" + name), line
