"""The README as a newcomer reads it: its numbers of the released models come from the
manifest (one source of truth), its links point at files that exist, and no command in it
needs a folder that only this project's machines have."""

import os
import re

from benchmarks import release

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_released_models_table_is_the_manifests():
    assert release.readme_block() in README, "run `python benchmarks/release.py --readme`"


def test_readme_block_lists_every_manifest_entry(tmp_path):
    block = release.readme_block()
    for entry in release.read_manifest():
        assert f"--dataset {entry['dataset']} --seed {entry['seed']} --pretrained" in block
        assert f"{100 * entry['metrics']['accuracy_hungarian']:.2f}" in block


def test_update_readme_rewrites_only_the_block(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"before\n{release.README_BEGIN}\nstale\n{release.README_END}\nafter\n")
    assert release.update_readme(str(path))
    assert path.read_text() == f"before\n{release.readme_block()}\nafter\n"
    assert not release.update_readme(str(path))


def test_local_links_and_images_exist():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links no file"
    missing = [t for t in local if not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, missing


def test_no_command_needs_this_projects_shared_folder():
    assert "../shared" not in README
