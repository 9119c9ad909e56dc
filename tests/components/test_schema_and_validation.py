"""The curated schema catches drift, and the validation gate stops the run on any anomaly."""
import os

import pytest
import tensorflow as tf

from components import schema as curated
from components.dataset_spec import builtin_spec_names, load_spec
from components.validation_gate import read_anomalies


@pytest.mark.parametrize("name", builtin_spec_names())
def test_committed_schema_matches_spec(name):
    with open(os.path.join(curated.SCHEMAS_DIR, name, "schema.pbtxt")) as f:
        assert f.read() == curated.schema_text(load_spec(name)), "run: python -m components.schema"


def _examples(rows):
    out = []
    for r in rows:
        ex = tf.train.Example()
        for k, v in r.items():
            if isinstance(v, int):
                ex.features.feature[k].int64_list.value.append(v)
            else:
                ex.features.feature[k].bytes_list.value.append(v.encode())
        out.append(ex.SerializeToString())
    return out


def _stats(serialized):
    """Statistics as StatisticsGen computes them (TFDV over the decoded record batch)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(serialized)
    return stats_impl.generate_statistics_in_memory(batch, curated.statistics_options())


def _row(i, **over):
    row = {"label": i % 2, **{f"I{j}": i + j for j in range(1, 14)}, **{f"C{j}": f"v{i % 7}" for j in range(1, 27)}}
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


def test_clean_day_has_no_anomalies():
    import tensorflow_data_validation as tfdv
    schema = curated.curated_schema(load_spec("criteo"))
    anomalies = tfdv.validate_statistics(_stats(_examples([_row(i) for i in range(50)])), schema)
    assert not anomalies.anomaly_info


def test_vanished_column_is_an_anomaly():
    import tensorflow_data_validation as tfdv
    schema = curated.curated_schema(load_spec("criteo"))
    anomalies = tfdv.validate_statistics(_stats(_examples([_row(i, C5=None) for i in range(50)])), schema)
    assert "C5" in anomalies.anomaly_info


def test_categorical_column_turned_numeric_is_an_anomaly():
    # Upstream switched C3 to numbers: the tf.Example carries an int64 where the schema says BYTES.
    import tensorflow_data_validation as tfdv
    schema = curated.curated_schema(load_spec("criteo"))
    anomalies = tfdv.validate_statistics(_stats(_examples([_row(i, C3=i) for i in range(50)])), schema)
    assert "C3" in anomalies.anomaly_info


def test_label_outside_domain_is_an_anomaly():
    import tensorflow_data_validation as tfdv
    schema = curated.curated_schema(load_spec("criteo"))
    anomalies = tfdv.validate_statistics(_stats(_examples([_row(i, label=2 * (i % 2)) for i in range(50)])), schema)
    assert "label" in anomalies.anomaly_info


def test_gate_reads_anomalies_per_split(tmp_path):
    import tensorflow_data_validation as tfdv
    schema = curated.curated_schema(load_spec("criteo"))
    anomalies = tfdv.validate_statistics(_stats(_examples([_row(i, C5=None) for i in range(20)])), schema)
    (tmp_path / "Split-eval").mkdir()
    (tmp_path / "Split-eval" / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    found = read_anomalies(str(tmp_path))
    assert list(found) == ["eval:C5"] and found["eval:C5"]
