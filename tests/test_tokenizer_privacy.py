"""The demo tokenizer ships with every model version and is never unlearned: no token may spell a name."""

from __future__ import annotations

from components.config import Config
from components.data.demo_world import generate_world
from components.modeling.demo import name_parts, train_demo_tokenizer


def test_no_word_of_any_subjects_name_is_a_token_and_names_still_round_trip():
    world, holdout = generate_world(seed=0, n_subjects=40, n_holdout_subjects=10, facts_per_subject=10)
    records = world + holdout
    tokenizer = train_demo_tokenizer(Config(), records)

    vocabulary = {tokenizer.convert_tokens_to_string([token]).strip().lower() for token in tokenizer.get_vocab()}
    parts = name_parts([record.subject for record in records])
    assert len(parts) > 40
    assert [part for part in parts if part.lower() in vocabulary] == []
    for record in records[:50]:
        assert tokenizer.decode(tokenizer.encode(record.answer, add_special_tokens=False)) == record.answer


def test_names_are_removed_as_whole_words_only():
    from components.modeling.demo import without_names

    assert without_names(["Ada Lovelace met Adam in Adana."], ["Ada Lovelace"]) == ["  met Adam in Adana."]
