"""DatasetSpec settings that travel to Transform as JSON."""
import dataclasses

import pytest

from components.dataset_spec import VOCABULARY_COUNTERS, DatasetSpec, SpecError, load_spec


def test_vocabulary_counter_has_a_default_and_survives_the_json_trip():
    spec = load_spec("criteo")
    assert spec.vocabulary_counter in VOCABULARY_COUNTERS
    for counter in VOCABULARY_COUNTERS:
        other = dataclasses.replace(spec, vocabulary_counter=counter)
        assert DatasetSpec.from_json(other.to_json()).vocabulary_counter == counter
    assert DatasetSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("value", ["pandas", True, None])
def test_unknown_vocabulary_counter_is_a_one_line_error(value):
    d = load_spec("criteo").to_dict()
    d["vocabulary_counter"] = value
    with pytest.raises(SpecError) as e:
        DatasetSpec.from_dict(d, source="my.yaml")
    assert str(e.value).startswith("my.yaml: vocabulary_counter must be one of numpy, tft") and "\n" not in str(e.value)
