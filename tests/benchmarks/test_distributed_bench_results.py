"""The committed distributed benchmark (benchmarks/distributed_bench.py; issue #21): every configuration
ran at 1e6 and 1e7 embedding rows, the parameter-server runs split each table in two shards on the two
parameter servers, the memory of the tables and their slots went to the parameter servers (not to the
coordinator or the workers), and the text table is the JSON's."""
import json
import math
import os

import pytest

from benchmarks import distributed_bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "benchmarks", "results", "distributed_cpu")
MIB = 2 ** 20


@pytest.fixture(scope="module")
def report():
    with open(RESULTS + ".json") as f:
        return json.load(f)


def runs(report, size):
    return {r["config"]: r for r in report["runs"] if r["size"] == size}


def test_every_configuration_ran_at_both_sizes(report):
    assert report["sizes"] == ["1e6", "1e7"] and report["configs"] == list(distributed_bench.CONFIGS)
    assert report["batch"] == distributed_bench.BATCH and report["steps"] >= 100
    for size in report["sizes"]:
        done = runs(report, size)
        assert sorted(done) == sorted(distributed_bench.CONFIGS)
        for config, run in done.items():
            assert run["exit_code"] == 0 and "error" not in run, (size, config)
            assert run["examples_per_s"] > 0 and math.isfinite(run["examples_per_s"])
            assert run["steps"] == report["steps"]
            assert run["jit_compile"] is (config == "single_xla")


def test_parameter_servers_hold_the_tables_in_two_shards(report):
    for size in report["sizes"]:
        run = runs(report, size)["ps2"]
        rows = int(float(size)) // len(distributed_bench.FIELDS)
        shards = run["table_shards"]
        assert [s["device"] for s in shards] == ["/job:ps/replica:0/task:0/device:CPU:0",
                                                 "/job:ps/replica:0/task:1/device:CPU:0"]
        assert sum(s["rows"] for s in shards) == rows and abs(shards[0]["rows"] - shards[1]["rows"]) <= 1
        assert set(run["tasks"]) == {"chief 0", "worker 0", "worker 1", "ps 0", "ps 1"}
        assert run["strategy"] == "ParameterServerStrategyV2"
        # One process: the whole table where it trains.
        assert [s["rows"] for s in runs(report, size)["single"]["table_shards"]] == [rows]


def test_table_memory_goes_to_the_parameter_servers(report):
    """From 1e6 to 1e7 rows the tables and their three Group Adam slots grow by ~1.1 GiB: each
    parameter server takes about half of it, the coordinator and the workers none of it; one process
    (and each multi-worker worker, a full copy each) takes all of it."""
    grown = (distributed_bench.bytes_of_tables("1e7") - distributed_bench.bytes_of_tables("1e6")) / MIB

    def growth(config, task):
        return runs(report, "1e7")[config]["tasks"][task]["peak_rss_mib"] - \
            runs(report, "1e6")[config]["tasks"][task]["peak_rss_mib"]

    for ps in ("ps 0", "ps 1"):
        assert 0.35 * grown < growth("ps2", ps) < 1.0 * grown, (ps, growth("ps2", ps), grown)
    for task in ("chief 0", "worker 0", "worker 1"):
        assert growth("ps2", task) < 0.2 * grown, (task, growth("ps2", task))
    assert growth("single", "single 0") > 0.7 * grown
    for task in ("worker 0", "worker 1"):
        assert growth("mwms2", task) > 0.7 * grown


def test_text_table_is_rendered_from_the_json(report):
    with open(RESULTS + ".txt") as f:
        assert f.read() == distributed_bench.render(report)
