"""pyproject's version floors cover what the code uses (a user with the floor versions can run it)."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]

# what the code uses -> (distribution, the first version that has it)
NEEDS = {
    "tomllib": ("python", (3, 11, 4)),  # with tarfile's extractall(filter=), added in 3.11.4
    'extractall(tmp, filter="data")': ("python", (3, 11, 4)),
    "np.bitwise_count": ("numpy", (2, 0)),
    "validate_data": ("scikit-learn", (1, 6)),
}


def floors() -> dict[str, tuple[int, ...]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {"python": project["requires-python"]}
    for dep in project["dependencies"]:
        name, _, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(>=\s*([0-9.]+))?", dep).groups()
        found[name.lower()] = spec or ""
    return {k: tuple(int(p) for p in re.sub(r"[^0-9.]", "", v).split(".") if p) for k, v in found.items()}


def test_version_floors_cover_what_the_code_uses():
    code = "\n".join(p.read_text() for p in (ROOT / "aelab").rglob("*.py"))
    have = floors()
    for usage, (dist, needed) in NEEDS.items():
        if usage in code:
            assert have[dist] >= needed, f"{usage} needs {dist} >= {'.'.join(map(str, needed))}"
