"""load_records reads every supported shape and rejects every malformed input clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.data import DataError, QARecord, TextRecord, load_records, save_records

FIXTURES = Path(__file__).parent / "fixtures"
MUSE = FIXTURES / "muse_news"  # a sample of MUSE-News, see its README


@pytest.mark.parametrize("name", ["tofu_world.json", "tofu_world.jsonl", "tofu_world_hf.json"])
def test_tofu_shapes_load_the_same_records(name):
    records = load_records(FIXTURES / name, rows_per_subject=8)
    reference = load_records(FIXTURES / "tofu_world.json", rows_per_subject=8)
    assert records == reference
    assert len(records) == 48
    assert all(isinstance(r, QARecord) for r in records)


def test_tofu_rows_get_one_subject_per_block():
    records = load_records(FIXTURES / "tofu_world.json", rows_per_subject=8)
    subjects = [r.subject for r in records]
    assert len(set(subjects)) == 6
    assert subjects[:8] == ["subject-0001"] * 8 and subjects[8] == "subject-0002"


def test_paraphrased_and_perturbed_answers_are_kept():
    first = load_records(FIXTURES / "tofu_world.json", rows_per_subject=8)[0]
    raw = json.loads((FIXTURES / "tofu_world.json").read_text())[0]
    assert first.paraphrased_answer == raw["paraphrased_answer"]
    assert list(first.perturbed_answers) == raw["perturbed_answer"]


def test_prompt_response_keys_and_subject_field(tmp_path):
    path = tmp_path / "world.jsonl"
    path.write_text(
        json.dumps({"prompt": "Who?", "response": "Ada.", "subject": "Ada"}) + "\n"
        + json.dumps({"prompt": "When?", "response": "1815.", "subject": "Ada"}) + "\n"
    )
    records = load_records(path)
    assert records == [
        QARecord(question="Who?", answer="Ada.", subject="Ada"),
        QARecord(question="When?", answer="1815.", subject="Ada"),
    ]


def test_json_list_of_strings_is_a_text_corpus(tmp_path):
    path = tmp_path / "articles.json"
    path.write_text(json.dumps(["First article.", "Second article."]))
    assert load_records(path) == [
        TextRecord(text="First article.", subject="document-00001"),
        TextRecord(text="Second article.", subject="document-00002"),
    ]


def test_txt_file_splits_documents_on_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Doc one, line one.\nDoc one, line two.\n\n\nDoc two.\n")
    records = load_records(path, rows_per_subject=1)
    assert [r.text for r in records] == ["Doc one, line one.\nDoc one, line two.", "Doc two."]
    assert [r.subject for r in records] == ["subject-0001", "subject-0002"]


def test_hugging_face_dataset_directory(tmp_path):
    import datasets

    rows = json.loads((FIXTURES / "tofu_world.json").read_text())
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    records = load_records(tmp_path / "ds", rows_per_subject=8)
    assert records == load_records(FIXTURES / "tofu_world.json", rows_per_subject=8)


def test_hub_dataset_name_is_tried_offline_and_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as error:
        load_records("no-such-owner/no-such-dataset")
    assert "no-such-owner/no-such-dataset" in str(error.value)


def test_saved_records_load_back_unchanged(tmp_path):
    records = load_records(FIXTURES / "tofu_world.json", rows_per_subject=8)
    texts = [TextRecord(text="An article.", subject="bbc-1")]
    assert load_records(save_records(records + texts, tmp_path / "out.jsonl")) == records + texts


def test_muse_news_text_and_qa_subsets_load(tmp_path):
    articles = json.loads((MUSE / "raw" / "forget.json").read_text())[:5]
    qa = json.loads((MUSE / "knowmem" / "forget_qa.json").read_text())[:5]
    (tmp_path / "articles.json").write_text(json.dumps(articles))
    (tmp_path / "qa.json").write_text(json.dumps(qa))
    texts = load_records(tmp_path / "articles.json")
    questions = load_records(tmp_path / "qa.json", rows_per_subject=5)
    assert [r.text for r in texts] == articles
    assert [(r.question, r.answer) for r in questions] == [(q["question"], q["answer"]) for q in qa]


# ---------------------------------------------------------------- malformed input


def _error(tmp_path, name: str, content: bytes | str, **kwargs) -> DataError:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as error:
        load_records(path, **kwargs)
    assert name in str(error.value), "the error must name the file"
    return error.value


def test_invalid_json_names_the_line(tmp_path):
    error = _error(tmp_path, "bad.json", '[{"question": "a", "answer": "b", "subject": "s"},\n{oops}]')
    assert "invalid JSON at line 2" in str(error)


def test_empty_file(tmp_path):
    assert "empty" in str(_error(tmp_path, "empty.json", "  \n"))


def test_empty_array(tmp_path):
    assert "empty" in str(_error(tmp_path, "none.json", "[]"))


def test_missing_answer_key_names_the_row(tmp_path):
    rows = [{"question": "q", "answer": "a", "subject": "s"}, {"question": "q2", "subject": "s"}]
    error = _error(tmp_path, "rows.json", json.dumps(rows))
    assert error.row == 2 and "answer" in str(error)


def test_wrong_type_names_the_key_and_row(tmp_path):
    error = _error(tmp_path, "types.jsonl", json.dumps({"question": 3, "answer": "a", "subject": "s"}))
    assert error.row == 1 and "'question' must be a string" in str(error)


def test_perturbed_answers_must_be_strings(tmp_path):
    row = {"question": "q", "answer": "a", "subject": "s", "perturbed_answer": [1, 2]}
    assert "perturbed_answer" in str(_error(tmp_path, "p.json", json.dumps([row])))


def test_non_utf8_file(tmp_path):
    assert "UTF-8" in str(_error(tmp_path, "latin1.json", '[{"question": "caf\xe9"}]'.encode("latin-1")))


def test_rows_that_are_not_objects(tmp_path):
    error = _error(tmp_path, "mixed.json", json.dumps([{"question": "q", "answer": "a", "subject": "s"}, 7]))
    assert error.row == 2


def test_missing_subject_without_rows_per_subject_says_what_to_do(tmp_path):
    error = _error(tmp_path, "nosub.json", json.dumps([{"question": "q", "answer": "a"}]))
    assert "rows_per_subject" in str(error)


def test_blank_answer_is_rejected(tmp_path):
    error = _error(tmp_path, "blank.json", json.dumps([{"question": "q", "answer": "  ", "subject": "s"}]))
    assert "'answer' is empty" in str(error)


def test_top_level_scalar_is_rejected(tmp_path):
    assert "expected a JSON array" in str(_error(tmp_path, "scalar.json", "42"))


def test_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError):
        load_records(tmp_path / "nope.json")
