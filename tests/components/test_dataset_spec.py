"""DatasetSpec settings that travel to Transform as JSON."""
import dataclasses

import pytest

from components.dataset_spec import DatasetSpec, SpecError, load_spec


def test_vocabulary_prefilter_is_off_by_default_and_survives_the_json_trip():
    spec = load_spec("criteo")
    assert spec.vocabulary_prefilter is False
    on = dataclasses.replace(spec, vocabulary_prefilter=True)
    assert DatasetSpec.from_json(on.to_json()).vocabulary_prefilter is True
    assert DatasetSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_vocabulary_prefilter_that_is_not_a_bool_is_a_one_line_error(value):
    d = load_spec("criteo").to_dict()
    d["vocabulary_prefilter"] = value
    with pytest.raises(SpecError) as e:
        DatasetSpec.from_dict(d, source="my.yaml")
    assert str(e.value).startswith("my.yaml: vocabulary_prefilter must be true or false") and "\n" not in str(e.value)
