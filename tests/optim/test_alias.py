"""optim.create: the one name -> optimizer table."""

import pytest
import tf_keras

import optim


@pytest.mark.parametrize("name", sorted(optim.GROUP_OPTIMIZERS))
def test_create_builds_the_group_optimizer_of_a_name(name):
    opt = optim.create(name, learning_rate=0.01, l1=1e-5, l2=0.0, l21=1e-3, jit_compile=False)
    assert isinstance(opt, optim.OPTIMIZERS[name]) and isinstance(opt, optim.GroupOptimizer)
    assert float(opt.learning_rate) == pytest.approx(0.01)


def test_the_dense_baseline_drops_the_regularizers():
    opt = optim.create("adam", learning_rate=0.01, l1=0.0, l2=0.0, l21=1e-3, jit_compile=False)
    assert type(opt) is tf_keras.optimizers.Adam and float(opt.learning_rate) == pytest.approx(0.01)


def test_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="'nosuch' not in"):
        optim.create("nosuch", learning_rate=0.01)
