import shutil
from pathlib import Path

import pytest

from enrich.errors import ArtifactError
from enrich.llm.templates import FILE_NAME, load_prompt, prompts_dir, read_template, release, released_hashes

GOLDEN = Path(__file__).parent / "data" / "golden"
GOLDEN_VALUES = {
    "attribute": {"title": "Hornby R1179 Santa's Express Train Set", "text": "An oval track and a red train.",
                  "question": "What is the main colour of the product itself?", "options": ["red", "not stated"]},
    "taxonomy": {"title": "Hornby R1179 Santa's Express Train Set", "text": "An oval track and a red train.",
                 "options": ["Toys & Games > Toys > Play Vehicles > Toy Trains & Train Sets",
                             "Arts & Entertainment > Hobbies & Creative Arts > Model Making > Model Trains & Train Sets"]},
}


@pytest.mark.parametrize("task", sorted(GOLDEN_VALUES))
def test_released_prompts_render_as_their_golden_files(task):
    template = load_prompt(task)
    golden = GOLDEN / f"{template.name}.txt"
    assert template.render(**GOLDEN_VALUES[task]) == golden.read_text().rstrip("\n")


def test_every_prompt_file_is_released_and_unedited():
    folder = prompts_dir()
    released = released_hashes(folder)
    files = sorted(p.name for p in folder.glob("*.yaml"))
    assert files and all(FILE_NAME.fullmatch(name) for name in files)
    assert set(files) == set(released)
    for name in files:
        read_template(folder / name, released)  # raises if the file changed after release


def test_rendering_is_strict_about_variables():
    template = load_prompt("attribute")
    values = dict(GOLDEN_VALUES["attribute"])
    with pytest.raises(ValueError, match="missing variables \\['question'\\]"):
        template.render(**{k: v for k, v in values.items() if k != "question"})
    with pytest.raises(ValueError, match="unknown variables \\['colour'\\]"):
        template.render(**values, colour="red")


def _copy_prompts(tmp_path: Path) -> Path:
    folder = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), folder)
    return folder


def test_an_edited_release_is_refused_and_a_new_version_is_the_way(tmp_path):
    folder = _copy_prompts(tmp_path)
    released = folder / "attribute.v1.yaml"
    released.write_text(released.read_text().replace("Answer with exactly one", "Answer with one"))
    with pytest.raises(ArtifactError, match="edited after its release"):
        load_prompt("attribute", 1, folder)
    with pytest.raises(ArtifactError, match="edited after its release"):
        release(released)
    shutil.copy(prompts_dir() / "attribute.v1.yaml", released)
    newer = folder / "attribute.v2.yaml"
    newer.write_text((folder / "attribute.v1.yaml").read_text().replace("version: 1", "version: 2")
                     .replace("Answer with exactly one", "Answer with one"))
    assert load_prompt("attribute", folder=folder).version == 1  # drafts are not picked until released
    assert release(newer) == "attribute.v2"
    assert load_prompt("attribute", folder=folder).version == 2


@pytest.mark.parametrize("change, message", [
    (lambda t: t + "temperature: 0.2\n", "exactly the keys"),
    (lambda t: t.replace("variables: [title, text, question, options]", "variables: [title, text, options]"),
     "uses .* but declares"),
    (lambda t: t.replace("version: 1", "version: 3"), "differ from the name"),
])
def test_malformed_templates_are_refused(tmp_path, change, message):
    folder = _copy_prompts(tmp_path)
    path = folder / "attribute.v1.yaml"
    path.write_text(change(path.read_text()))
    with pytest.raises(ArtifactError, match=message):
        read_template(path)
