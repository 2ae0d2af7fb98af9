import hashlib
import json
import re

import pytest

from pixelwizard.io.lines import LineFileError
from pixelwizard.pipeline.prompts import Prompt, PromptFileError, read_ids, read_prompts, shard, single_prompt


def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_plain_text_prompts_get_stable_derived_ids(tmp_path):
    path = _write(tmp_path, "p.txt", ["", "  A red fox runs through the snow.  ", "", "海边的日落", "x"])
    prompts = read_prompts(path)
    assert [p.text for p in prompts] == ["A red fox runs through the snow.", "海边的日落", "x"]
    assert prompts[0].id == f"a-red-fox-runs-{_sha('A red fox runs through the snow.')[:8]}"
    assert prompts[1].id == f"prompt-{_sha('海边的日落')[:8]}"
    assert prompts[2].id == f"x-{_sha('x')[:8]}"
    assert prompts[0].text_hash == _sha(prompts[0].text)[:16]


def test_derived_ids_survive_insertions_and_deletions(tmp_path):
    before = read_prompts(_write(tmp_path, "a.txt", ["a cat", "a dog", "a cow"]))
    after = read_prompts(_write(tmp_path, "b.txt", ["new first line", "a cat", "", "a cow", "another"]))
    ids_before = {p.text: p.id for p in before}
    ids_after = {p.text: p.id for p in after}
    assert ids_after["a cat"] == ids_before["a cat"] and ids_after["a cow"] == ids_before["a cow"]
    assert len(set(ids_after.values())) == len(after)


def test_jsonl_key_variants(tmp_path):
    records = [
        {"id": "fox", "text": "a fox"},
        {"prompt_id": "owl-1", "prompt": "an owl"},
        {"id": 7, "caption": "a cat"},
        {"prompt_id": 8.5, "text": "a dog"},
        {"id": "both", "prompt_id": "ignored", "text": "wins", "prompt": "loses", "caption": "loses too"},
        {"prompt": "  no id here  ", "extra": [1, 2]},
        {"id": "", "text": "empty id derives"},
    ]
    path = _write(tmp_path, "p.jsonl", ["", "   " + json.dumps(records[0])] + [json.dumps(r) for r in records[1:]])
    prompts = read_prompts(path)
    assert [(p.id, p.text) for p in prompts] == [
        ("fox", "a fox"),
        ("owl-1", "an owl"),
        ("7", "a cat"),
        ("8.5", "a dog"),
        ("both", "wins"),
        (f"no-id-here-{_sha('no id here')[:8]}", "no id here"),
        (f"empty-id-derives-{_sha('empty id derives')[:8]}", "empty id derives"),
    ]


def test_first_line_decides_format(tmp_path):
    # a txt file whose later line looks like JSON stays plain text
    prompts = read_prompts(_write(tmp_path, "p.txt", ["a fox", '{"id": "x", "text": "y"}']))
    assert prompts[1].text == '{"id": "x", "text": "y"}'


def _error(tmp_path, lines, name="p.jsonl"):
    path = _write(tmp_path, name, lines)
    with pytest.raises(PromptFileError) as info:
        read_prompts(path)
    assert isinstance(info.value, ValueError)
    return path, str(info.value)


@pytest.mark.parametrize("lines, line, problem", [
    (['{"id": "a", "text": "x"}', "", '{"id": "b", "text": "y"'], 3, "invalid JSON"),
    (['{"id": "a", "text": "x"}', "not json"], 2, "invalid JSON"),
    (['{"id": "a", "text": "x"}', "[1, 2]"], 2, "not a JSON object"),
    (['{"id": "a", "text": "x"}', '{"id": "b"}'], 2, "text: missing"),
    (['{"id": "a", "text": "   "}'], 1, "text '   ': empty"),
    (['{"id": "a", "text": 3}'], 1, "text 3: must be a string"),
    (['{"id": true, "text": "x"}'], 1, "id True: must be a string"),
    (['{"id": "a", "text": "x"}', '{"id": "b", "text": "y"}', '{"prompt_id": "a", "text": "z"}'], 3,
     r"duplicate prompt id 'a' \(first on line 1\)"),
])
def test_jsonl_errors_name_the_line(tmp_path, lines, line, problem):
    path, message = _error(tmp_path, lines)
    assert re.fullmatch(rf"{re.escape(str(path))}:{line}: .*{problem}.*; .+", message)


def test_duplicate_plain_lines_name_both_lines(tmp_path):
    path, message = _error(tmp_path, ["a fox", "an owl", "", "a fox"], name="p.txt")
    assert message.startswith(f"{path}:4: duplicate prompt id 'a-fox-") and "(first on line 1)" in message


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "..", ".hidden", "a..b", "-x", "x" * 129, "a b", "a\\b", "é"])
def test_unsafe_ids_are_rejected(tmp_path, bad_id):
    path, message = _error(tmp_path, [json.dumps({"id": "ok", "text": "x"}), json.dumps({"id": bad_id, "text": "y"})])
    assert message.startswith(f"{path}:2: id ") and ": not usable as a file name; ids name files" in message
    with pytest.raises(ValueError):
        Prompt(bad_id, "y")


def test_longest_valid_id(tmp_path):
    (prompt,) = read_prompts(_write(tmp_path, "p.jsonl", [json.dumps({"id": "A" + "b._-9" * 25 + "xy", "text": "t"})]))
    assert len(prompt.id) == 128


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "p.txt"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=rf"^{re.escape(str(path))}:1: no prompts in file; "):
        read_prompts(path)


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_prompts(tmp_path / "nope.txt")
    path = tmp_path / "latin1.txt"
    path.write_bytes("a fox\nun café\n".encode("latin-1"))
    with pytest.raises(LineFileError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8; "):
        read_prompts(path)


def test_shard():
    prompts = [Prompt(f"p{i}", f"text {i}") for i in range(10)]
    shards = shard(prompts, 4)
    assert [[p.id for p in s] for s in shards] == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"]]
    assert shard(prompts, 10) == [prompts] and shard(prompts, 99) == [prompts] and shard([], 3) == []
    for size in (0, -1):
        with pytest.raises(ValueError, match="size"):
            shard(prompts, size)


def test_an_id_ending_in_a_newline_is_not_a_file_name(tmp_path):
    path, message = _error(tmp_path, [json.dumps({"id": "fox\n", "text": "a fox"})])
    assert message.startswith(f"{path}:1: id 'fox\\n': not usable as a file name")
    with pytest.raises(ValueError):
        Prompt("fox\n", "a fox")


def test_per_prompt_seed_and_negative_prompt(tmp_path):
    path = _write(tmp_path, "p.jsonl", [json.dumps({"id": "a", "text": "x", "seed": 7, "negative_prompt": "blur"}),
                                        json.dumps({"id": "b", "text": "y", "category": "kept for the user"})])
    assert read_prompts(path) == [Prompt("a", "x", seed=7, negative_prompt="blur"), Prompt("b", "y")]
    for record, problem in (({"seed": -1}, "seed -1: must be a whole number"), ({"seed": 1.5}, "seed 1.5"),
                            ({"seed": True}, "seed True"), ({"negative_prompt": 3}, "negative_prompt 3")):
        _, message = _error(tmp_path, [json.dumps({"id": "a", "text": "x", **record})])
        assert problem in message


def test_single_prompt_and_id_files(tmp_path):
    (prompt,) = single_prompt("  A red fox runs through the snow.  ")
    assert prompt == read_prompts(_write(tmp_path, "p.txt", ["A red fox runs through the snow."]))[0]
    ids = _write(tmp_path, "ids.txt", [prompt.id, "", "# a comment", prompt.id])
    assert read_ids(ids, [prompt]) == (prompt.id,)
    with pytest.raises(PromptFileError, match=r"ids.txt:1: 'cat' is not an id of the run's prompts"):
        read_ids(_write(tmp_path, "ids.txt", ["cat"]), [prompt])
