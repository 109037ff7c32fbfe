"""The environment builder on its own: a build that died half-way, and removal of unused ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from environments.wheels import make_wheel
from tidal.environments.builder import COMPLETE, EnvironmentBuilder, EnvironmentBuildError
from tidal.environments.requirements import Requirements


def bundle(tmp_path: Path, version: str) -> tuple[Path, Requirements]:
    code = tmp_path / f"code-{version}"
    make_wheel(code / "wheels", "tidal_built", version, f"VERSION = {version!r}\n")
    text = f"--no-index\ntidal_built=={version}\n"
    (code / "requirements.txt").write_text(text)
    return code, Requirements(text, "requirements.txt", "requirements.txt", wheels=True)


async def build(builder: EnvironmentBuilder, code: Path, requirements: Requirements) -> tuple[str, list[str]]:
    lines: list[str] = []
    async with builder.environment(requirements, code, lines.append) as key:
        return key, lines


async def test_a_build_that_died_half_way_is_built_again(tmp_path: Path) -> None:
    builder = EnvironmentBuilder(tmp_path / "envs", tmp_path / "cache")
    code, requirements = bundle(tmp_path, "1.0")
    key, lines = await build(builder, code, requirements)
    assert builder.ready(key) and any("built in" in line for line in lines)
    site = next((builder.path(key) / "lib").glob("python3*/site-packages"))
    assert (site / "tidal_built" / "__init__.py").read_text() == "VERSION = '1.0'\n"

    (builder.path(key) / COMPLETE).unlink()  # as if the gateway died before the end of the build
    (site / "tidal_built" / "__init__.py").unlink()
    again, lines = await build(builder, code, requirements)
    assert again == key and any("built in" in line for line in lines), lines
    assert (site / "tidal_built" / "__init__.py").exists()
    await builder.close()


async def test_unused_environments_are_removed_and_used_ones_kept(tmp_path: Path) -> None:
    builder = EnvironmentBuilder(tmp_path / "envs", tmp_path / "cache")
    old, _ = await build(builder, *bundle(tmp_path, "1.0"))
    new, _ = await build(builder, *bundle(tmp_path, "2.0"))
    assert old != new
    assert await builder.remove_unused({new}) == [old]
    assert not builder.path(old).exists() and builder.ready(new)
    # The pointer from the old requirements went with it: they resolve (and build) again.
    _, lines = await build(builder, *bundle(tmp_path, "1.0"))
    assert any("resolving" in line for line in lines)
    await builder.close()


async def test_an_unresolvable_requirement_raises_with_uvs_message(tmp_path: Path) -> None:
    builder = EnvironmentBuilder(tmp_path / "envs", tmp_path / "cache")
    code, _ = bundle(tmp_path, "1.0")
    wrong = Requirements("--no-index\ntidal_built==3.0\n", "tidal.toml", None, wheels=True)
    with pytest.raises(EnvironmentBuildError, match="resolving the requirements failed") as failed:
        await build(builder, code, wrong)
    assert "tidal-built==3.0" in str(failed.value).replace("_", "-")
    assert not any(path.name != ".inputs" for path in (tmp_path / "envs").glob("*"))
    await builder.close()
